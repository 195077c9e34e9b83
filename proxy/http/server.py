"""The client-facing HTTP/1.1 server: llhttp (httptools) parsing in strict mode, keep-alive
and pipelining, limits and deadlines enforced per connection, responses framed by us.

Why not aiohttp's server: the proxy needs per-phase deadlines (header read, idle
keep-alive, body inactivity), 414/431 limits and raw byte access it does not expose, and
a lean path (aiohttp's Request/Response objects cost more than forwarding itself)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

import httptools

from backends.support.tasks import TaskSet
from proxy.http.chunks import ChunkQueue

log = logging.getLogger("forkproxy.http")

_REASONS = {
    100: b"Continue",
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


_LINGER = 2.0  # seconds to drain a client's input after an error answer
_RATE_GRACE = 5.0  # seconds before body_min_rate applies (a slow start is not an attack)


@dataclass(frozen=True)
class Limits:
    max_url: int = 8192  # request target bytes (nginx large_client_header_buffers 8k) -> 414
    max_header_bytes: int = 32768  # all header lines together -> 431
    max_headers: int = 100  # header lines (HAProxy tune.http.maxhdr 101) -> 431
    max_body: int = 1 << 30  # bytes, 0 = unlimited (nginx client_max_body_size) -> 413
    header_timeout: float = 10.0  # first byte to end of head (HAProxy timeout http-request) -> 408
    keepalive_timeout: float = 75.0  # idle between requests (nginx keepalive_timeout 75s); 0 = off
    body_timeout: float = 60.0  # no body byte for this long (nginx client_body_timeout) -> 408
    body_min_rate: int = 0  # bytes/s averaged after the first 5 s (_RATE_GRACE), 0 = off -> 408
    send_timeout: float = 60.0  # client not reading the response (nginx send_timeout)
    max_connections: int = 10000


class ClientError(Exception):
    """The client broke a rule; answer `status` (if nothing was sent yet) and close."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class Body:
    """A request body as the client sends it, read in pieces with backpressure."""

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self._chunks = ChunkQueue(conn.pause_reading, conn.resume_reading)
        self.received = 0
        self.complete = False
        self.error: Exception | None = None
        self.on_first_read: Callable[[], None] | None = None  # sends 100 Continue
        self.started = time.monotonic()

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        limit = self._conn.limits.max_body
        if limit and self.received > limit:
            self.fail(ClientError(413, "Content Too Large: the body exceeds the limit"))
            return
        self._chunks.push(data)

    def finish(self) -> None:
        self.complete = True
        self._chunks.wake()

    def fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
            self._chunks.wake()

    async def read(self) -> bytes:
        if self.on_first_read is not None:
            self.on_first_read()
            self.on_first_read = None
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()
        data = self._chunks.pop()
        self._check_rate()
        return data

    async def prefetch(self, limit: int) -> None:
        """Wait until the body is complete or `limit` bytes are buffered, so a slow
        client holds no instance slot while it dribbles a small body (nginx buffers
        request bodies for the same reason). Same deadlines as read()."""
        while not self.complete and self._chunks.buffered < limit:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def _wait(self) -> None:
        self._conn.resume_reading()
        try:
            async with asyncio.timeout(self._conn.limits.body_timeout):
                await self._chunks.wait()
        except TimeoutError:
            raise ClientError(408, "Request Timeout: the body stalled") from None
        self._check_rate()

    def _check_rate(self) -> None:
        rate = self._conn.limits.body_min_rate
        if rate and not self.complete:
            elapsed = time.monotonic() - self.started
            if elapsed > _RATE_GRACE and self.received < rate * elapsed:
                raise ClientError(408, "Request Timeout: the body is arriving too slowly")

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data


class Request:
    __slots__ = (
        "_chunked_out",
        "body",
        "chunked",
        "conn",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "response_started",
        "started",
        "status",
        "upgrade",
        "version",
    )

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn
        self.method = ""
        self.path = b""  # origin-form, byte for byte as sent
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.response_started = False
        self.status = 0  # the status this proxy answered (0: none yet)
        self.started = time.monotonic()
        self.body: Body = Body(conn)
        self._chunked_out = False

    @property
    def peer(self) -> str:
        return self.conn.peer

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    # -- responding ----------------------------------------------------------------------

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        length: int | None,
        body: bool = True,
        payload: bytes = b"",
    ) -> None:
        """Write the response head. `length` None with a body: chunked (or close-delimited
        for HTTP/1.0). `body=False` (HEAD, 204, 304): framing headers kept as given."""
        self.response_started = True
        self.status = status
        conn = self.conn
        keep = self.keep_alive and not conn.closing
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))]
        parts.extend(n + b": " + v + b"\r\n" for n, v in headers)
        if body:
            if length is not None:
                parts.append(b"Content-Length: %d\r\n" % length)
            elif self.version == "1.1":
                parts.append(b"Transfer-Encoding: chunked\r\n")
                self._chunked_out = True
            else:
                keep = False
        if not keep:
            parts.append(b"Connection: close\r\n")
            self.keep_alive = False
        parts.append(b"\r\n")
        if payload:
            parts.append(payload)  # head and a small body in one write
        conn.write(b"".join(parts))

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked_out:
            self.conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.conn.write(data)
        await self.conn.drain()

    def end(self) -> None:
        if self._chunked_out:
            self.conn.write(b"0\r\n\r\n")

    def respond(
        self, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """A short fixed response in one write (errors, never echoing the request)."""
        body = text.encode() + b"\n"
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Date", _date())]
        if extra:
            headers.extend(extra)
        self.start_response(status, b"", headers, length=len(body), payload=body)


_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


Handler = Callable[[Request], Awaitable[None]]
Upgrade = Callable[[Request, bytes], Awaitable[None]]


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs one handler at a time (pipelined
    requests wait their turn), enforces deadlines."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None
        self.active: Request | None = None
        self.pipeline: collections.deque[Request] = collections.deque()
        self.closing = False
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._in_head = False  # between message begin and headers complete
        # a request that broke the rules behind a pipelined one: answered after it
        self._broken: ClientError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._got_bytes = False  # of the request head being read
        # after an upgrade (websocket): raw bytes go to the tunnel, not the parser
        self.tunnel: Callable[[bytes], None] | None = None
        self.tunnel_eof: Callable[[], None] | None = None
        self._pending_upgrade: Request | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if len(self.server.connections) >= self.limits.max_connections:
            self.server.rejected("max_connections")
            self.transport.write(_TOO_MANY)
            self.transport.close()
            self.closing = True
            return
        self.server.connections.add(self)
        # a fresh connection gets header_timeout for its first byte (HAProxy's timeout
        # http-request); closed silently if nothing came, like an idle keep-alive one
        self._arm(self.limits.header_timeout, idle=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self._disarm()
        for req in (self.parsing, self.active, *self.pipeline):
            if req is not None:
                req.body.fail(ConnectionResetError("client closed the connection"))
        if self.tunnel_eof is not None:
            self.tunnel_eof()
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)
        self.server.idle_changed()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel(data)
            return
        if self.closing or self._broken is not None:
            return
        if not self._got_bytes and self.parsing is None:
            self._got_bytes = True
            self._arm(self.limits.header_timeout, idle=False)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            if self._pending_upgrade is None:
                # an upgrade we ignore (h2c, ...): the request was served as plain
                # HTTP/1.1; llhttp stopped, so a fresh parser takes what follows
                self.parser = httptools.HttpRequestParser(self)
                if offset < len(data):
                    self.data_received(data[offset:])
                return
            self._upgrade(data[offset:])
        except ClientError as exc:
            self.fail(exc.status, exc.text)
        except httptools.HttpParserError as exc:
            # a ClientError raised in our callbacks (414, 431, 413, 417, 505) reaches us
            # wrapped in HttpParserCallbackError
            cause = exc.__context__
            if isinstance(cause, ClientError):
                self.fail(cause.status, cause.text)
                return
            self.server.rejected("bad_request")
            log.debug("bad request from %s: %s", self.peer, exc)
            if (
                self.parsing is not None
                and self.parsing.body is not None
                and self.active is self.parsing
            ):
                self.parsing.body.fail(ClientError(400, "Bad Request: malformed body"))
                self.closing = True
            else:
                self.fail(400, "Bad Request")

    def eof_received(self) -> bool:
        if self.tunnel_eof is not None:
            self.tunnel_eof()
            return True
        if self.parsing is not None:
            self.parsing.body.fail(ConnectionResetError("client closed mid-request"))
        # half-close: finish the request in flight, then close
        self.closing = True
        return self.active is not None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Request(self)
        self._in_head = True
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        if not self._got_bytes:
            self._got_bytes = True
            self._arm(self.limits.header_timeout, idle=False)

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self._url_len += len(url)
        if self._url_len > self.limits.max_url:
            raise ClientError(414, "URI Too Long")
        self.parsing.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.parsing is not None
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            raise ClientError(431, "Request Header Fields Too Large: too many headers")
        if self._header_bytes > self.limits.max_header_bytes:
            raise ClientError(431, "Request Header Fields Too Large")
        if self._in_head:  # chunked trailers are counted against the limits, then dropped
            self.parsing.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self._got_bytes = False
        self._in_head = False
        self._disarm()
        req.method = self.parser.get_method().decode("ascii")
        req.version = self.parser.get_http_version()
        # keepalive_timeout = 0 disables keep-alive, as in nginx
        req.keep_alive = bool(self.parser.should_keep_alive()) and self.limits.keepalive_timeout > 0
        _validate(req)
        # only websocket upgrades are tunnelled; any other (h2c, ...) is ignored, which
        # RFC 9110 7.8 allows: the request is answered as plain HTTP/1.1
        req.upgrade = bool(self.parser.should_upgrade()) and _wants_websocket(req)
        limit = self.limits.max_body
        if req.content_length is not None and limit and req.content_length > limit:
            raise ClientError(413, "Content Too Large: the body exceeds the limit")
        # the Body made with the Request has seen nothing yet; its clock (min-rate) starts now
        req.body.started = time.monotonic()
        if not req.chunked and not req.content_length:
            req.body.complete = True
        if req.upgrade:
            self._pending_upgrade = req  # llhttp raises HttpParserUpgrade next
            return
        if self.active is None:
            self._run(req)
        else:
            self.pipeline.append(req)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body.feed(body)

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is not None:
            req.body.finish()
        self.parsing = None

    # -- running handlers ----------------------------------------------------------------

    def _run(self, req: Request) -> None:
        self.active = req
        self.server.tasks.spawn(self._handle(req), "request")

    async def _handle(self, req: Request) -> None:
        try:
            await self.server.handler(req)
        except ClientError as exc:
            if not req.response_started:
                req.keep_alive = False
                req.respond(exc.status, exc.text)
            self.closing = True
        except ConnectionError as exc:  # the client went away or stopped reading: routine
            log.debug("client %s: %s", self.peer, exc)
            self.abort()
            return
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception:
            log.exception("handler failed")
            if not req.response_started:
                req.keep_alive = False
                req.respond(500, "Internal Server Error")
            self.abort()
            return
        self._finished(req)

    def _finished(self, req: Request) -> None:
        self.active = None
        if not req.body.complete:
            # an unread body would be parsed as the next request: close instead, but
            # lingering, so the client still reads our answer (413, 408, ...)
            self.linger()
            return
        if not req.keep_alive or self.closing:
            self.close()
            return
        if self.pipeline:
            self._run(self.pipeline.popleft())
            if not self.pipeline and self._broken is None:
                self.resume_reading()
            return
        if self._broken is not None:
            self.fail(self._broken.status, self._broken.text)
            return
        self.resume_reading()
        if self.parsing is None:
            self._arm(self.limits.keepalive_timeout, idle=True)
        elif self._timer is None:
            # the next head's deadline passed while this request ran (_expired skips an
            # active connection): it gets a fresh one now rather than none
            self._arm(self.limits.header_timeout, idle=False)
        self.server.idle_changed()

    def _upgrade(self, rest: bytes) -> None:
        req = self._pending_upgrade
        self._pending_upgrade = None
        self.parsing = None
        if req is None or self.server.upgrade is None or self.active is not None:
            self.fail(400, "Bad Request: unexpected upgrade")
            return
        self.active = req
        self._disarm()
        self.server.tasks.spawn(self._run_upgrade(req, rest), "upgrade")

    async def _run_upgrade(self, req: Request, rest: bytes) -> None:
        assert self.server.upgrade is not None
        try:
            await self.server.upgrade(req, rest)
        except ClientError as exc:
            if not req.response_started:
                req.respond(exc.status, exc.text)
        except Exception:
            log.exception("upgrade failed")
        finally:
            self.active = None
            self.close()

    # -- i/o helpers ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client connection closed")
        if self._write_paused:
            self._drain = self.loop.create_future()
            try:
                async with asyncio.timeout(self.limits.send_timeout):
                    await self._drain
            except TimeoutError:
                raise ConnectionResetError("client did not read the response in time") from None
            finally:
                self._drain = None
            if self.transport.is_closing():
                raise ConnectionResetError("client connection closed")

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = False
            self.transport.resume_reading()

    def fail(self, status: int, text: str) -> None:
        """Answer a broken request (if no response started) and close."""
        active = self.active
        if active is None:
            self._broken = None
            self.server.rejected(f"http_{status}")
            tmp = Request(self)
            tmp.keep_alive = False
            tmp.respond(status, text)
            self.linger()
        elif not active.body.complete:
            # the active request's own body broke: its handler answers the error
            active.body.fail(ClientError(status, text))
            self.closing = True
        else:
            # a pipelined request broke: answer the ones before it, then this error
            self._broken = ClientError(status, text)
            if self.parsing is not None and self.parsing in self.pipeline:
                self.pipeline.remove(self.parsing)
            self.parsing = None
            self.pause_reading()

    def close(self) -> None:
        self.closing = True
        self._disarm()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
            if t.get_write_buffer_size():
                # close() waits for the buffer to flush: a client that stops reading
                # would hold the connection forever
                self.loop.call_later(self.limits.send_timeout, t.abort)

    def linger(self) -> None:
        """Close after an error answer while the client may still be sending: closing at
        once would reset the connection and the client could lose the answer unread
        (nginx's lingering_close). Send FIN, discard input until the client closes or
        _LINGER seconds pass."""
        t = self.transport
        if t is None or t.is_closing() or t.get_write_buffer_size() or not t.can_write_eof():
            self.close()
            return
        self.closing = True
        self._disarm()
        t.write_eof()
        self.resume_reading()  # data_received discards while closing
        self._timer = self.loop.call_later(_LINGER, self.abort)

    def abort(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, delay: float, *, idle: bool) -> None:
        self._disarm()
        if delay > 0:
            self._timer = self.loop.call_later(delay, self._expired, idle)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, idle: bool) -> None:
        self._timer = None
        if self.active is not None:
            return
        if idle and not self._got_bytes:
            self.close()  # an idle keep-alive connection: nothing to answer
            return
        self.server.rejected("header_timeout")
        self.fail(408, "Request Timeout")

    @property
    def idle(self) -> bool:
        return self.active is None and self.parsing is None


def _validate(req: Request) -> None:
    """Framing and Host rules llhttp leaves to us (it already rejects CL+TE, duplicate
    CL, bad chunk sizes, obs-fold, bare LF)."""
    if req.version not in ("1.1", "1.0"):  # 0.9, 2.0 on an HTTP/1 connection: a client error
        raise ClientError(400, "Bad Request: unsupported HTTP version")
    hosts = 0
    te: bytes | None = None
    tes = 0
    for name, value in req.headers:
        lname = name.lower()
        if lname == b"host":
            hosts += 1
            req.host = value
        elif lname == b"content-length":
            req.content_length = int(value)
        elif lname == b"transfer-encoding":
            te = value
            tes += 1
        elif lname == b"expect":
            if value.lower() != b"100-continue":
                raise ClientError(417, "Expectation Failed")
            req.expect_continue = True
    if te is not None:
        if tes > 1:
            raise ClientError(400, "Bad Request: more than one Transfer-Encoding header")
        if req.version != "1.1":
            raise ClientError(400, "Bad Request: Transfer-Encoding in HTTP/1.0")
        if te.strip().lower() != b"chunked":
            raise ClientError(400, "Bad Request: unsupported Transfer-Encoding")
        req.chunked = True
    if req.version == "1.1" and hosts != 1:
        raise ClientError(400, "Bad Request: exactly one Host header is required")
    if hosts > 1:
        raise ClientError(400, "Bad Request: more than one Host header")
    if hosts == 0:  # HTTP/1.0 without Host: the instance gets HTTP/1.1, which needs one
        req.host = req.conn.server.authority
        req.headers.append((b"Host", req.host))
    path = req.path
    if not path.startswith(b"/"):
        if path == b"*" and req.method == "OPTIONS":
            return
        # absolute-form (RFC 9112 3.2.2): forward the origin-form part
        scheme, sep, rest = path.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise ClientError(400, "Bad Request: invalid request target")
        slash = rest.find(b"/")
        query = rest.find(b"?")
        if slash == -1 or (query != -1 and query < slash):
            cut = query if query != -1 else len(rest)
            req.path = b"/" + rest[cut:]
            authority = rest[:cut]
        else:
            req.path = rest[slash:]
            authority = rest[:slash]
        if not authority or b"@" in authority:
            raise ClientError(400, "Bad Request: invalid request target")
        # RFC 9112 3.2.2: the target's authority replaces the Host header
        req.host = authority
        req.headers = [(n, v) for n, v in req.headers if n.lower() != b"host"]
        req.headers.append((b"Host", authority))


def _wants_websocket(req: Request) -> bool:
    value = req.header(b"upgrade")
    return value is not None and b"websocket" in value.lower()


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        *,
        upgrade: Upgrade | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.upgrade = upgrade
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self.tasks = TaskSet("http")
        self._server: asyncio.Server | None = None
        self._on_reject = on_reject
        self._idle = asyncio.Event()
        self.port = 0
        self.authority = b"localhost"  # host:port we listen on, the Host of HTTP/1.0 requests

    def rejected(self, reason: str) -> None:
        if self._on_reject is not None:
            self._on_reject(reason)

    def idle_changed(self) -> None:
        self._idle.set()

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_address=True, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        name = f"[{host}]" if ":" in host else host
        self.authority = f"{name}:{self.port}".encode("ascii", "replace")

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let active requests finish."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while True:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
                else:
                    conn.closing = True  # no keep-alive after the current response
            if not any(not c.idle for c in self.connections):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("shutdown timeout: aborting %d connections", len(self.connections))
                break
            self._idle.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.1)):
                    await self._idle.wait()
            except TimeoutError:
                pass
        for conn in list(self.connections):
            conn.abort()
        await self.tasks.aclose()
        if self._server is not None:
            await self._server.wait_closed()
