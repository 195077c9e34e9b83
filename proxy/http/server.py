"""The client-facing HTTP/1.1 server: llhttp (httptools) parsing in strict mode, keep-alive
and pipelining, limits and deadlines enforced per connection, responses framed by us.

Everything the client sends is framed by this parser until the instance has answered a
websocket handshake with 101: bytes after an upgrade head are held, not parsed and not
forwarded, and handed to the tunnel only then. An upgrade we do not tunnel (h2c, ...) is
ignored and the request framed by its Content-Length / Transfer-Encoding.

Why not aiohttp's server: the proxy needs per-phase deadlines (header read, idle
keep-alive, body inactivity), 414/431 limits and raw byte access it does not expose, and
a lean path (aiohttp's Request/Response objects cost more than forwarding itself)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

import httptools

from backends.support.tasks import TaskSet
from proxy.http.flow import HELD, PIPELINE, Flow
from proxy.http.request import ClientError, Limits, Request
from proxy.http.validate import tunnelled, validate

__all__ = ["ClientError", "HttpConnection", "HttpServer", "Limits", "Request"]

log = logging.getLogger("forkproxy.http")

_LINGER = 2.0  # seconds to drain a client's input after an error answer
_MAX_HELD = 64 * 1024  # bytes after an upgrade head kept until the 101 (then reading pauses)
_CHUNK_FRAMING = 24  # bytes of size line and CRLFs a chunk may take without extensions
_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Handler = Callable[[Request], Awaitable[None]]
Upgrade = Callable[[Request], Awaitable[None]]


class _PipelineFull(Exception):
    """Stops llhttp at a request beyond max_pipelined (it cannot be paused)."""


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs one handler at a time (pipelined
    requests wait their turn), enforces deadlines."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.flow = Flow()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None
        self.active: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self.pipeline: collections.deque[Request] = collections.deque()
        self.closing = False
        self.draining = False  # shutting down: finish what is in flight, no keep-alive
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._in_head = False  # between message begin and headers complete
        self._head_raw = 0  # raw bytes of the head in progress, counted as they arrive
        self._framing = 0  # chunked body: bytes that were not body data (size lines, ext)
        self._chunks = 0
        self._overflow = False  # more pipelined requests than max_pipelined: parser stopped
        # a request that broke the rules behind a pipelined one: answered after it
        self._broken: ClientError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._got_bytes = False  # of the request head being read
        # an upgrade (h2c, ...) we ignore whose body llhttp skipped: framed by a fresh
        # parser, fed a head carrying only that request's framing
        self._continuation: Request | None = None
        self._synthetic = False
        self._upgrading: Request | None = None  # a websocket head llhttp just ended
        # bytes after a websocket head, held until the instance answers 101
        self.held: bytearray | None = None
        # after the 101: raw bytes go to the tunnel, not the parser
        self.tunnel: Callable[[bytes], None] | None = None
        self.tunnel_eof: Callable[[], None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.attach(transport)
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
        task = self._task
        if task is not None and not task.done():
            # the client is gone: a request held for a slot leaves the queue (no demand,
            # never forwarded); one in flight is dropped and its slot released
            task.cancel()
        self.flow.wake()
        self.server.idle_changed()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel(data)
            return
        if self.held is not None:
            self.held += data
            if len(self.held) > _MAX_HELD:
                self.flow.pause(HELD)
            return
        if self.closing or self._broken is not None or self._overflow:
            return
        if not self._got_bytes and self.parsing is None:
            self._got_bytes = True
            self._arm(self.limits.header_timeout, idle=False)
        was_in_head = self._in_head
        body = self.parsing if self.parsing is not None and self.parsing.chunked else None
        before = body.body.received if body is not None else 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade_head(data[int(exc.args[0]) :])
            return
        except ClientError as exc:
            self.fail(exc.status, exc.text)
            return
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
            return
        if self._in_head:
            self._head_in_progress(data, was_in_head)
        elif body is not None and body is self.parsing and not was_in_head:
            self._count_framing(len(data) - (body.body.received - before))

    def _head_in_progress(self, data: bytes, was_in_head: bool) -> None:
        """Bounds on a head that did not end in this read. llhttp joins a header line
        across reads before calling us, so bytes are counted as they arrive (the read
        in which the head began is not: its offset is unknown, and it is one read)."""
        if was_in_head:
            self._head_raw += len(data)
            if self._head_raw > self.limits.max_header_bytes + self.limits.max_url + 1024:
                self.fail(431, "Request Header Fields Too Large")
                return
        version = self.parser.get_http_version()
        if version == "0.9" or (version == "0.0" and data.endswith(b"\n")):
            # a request line without a version (HTTP/0.9) ended: llhttp would wait
            # for headers 0.9 never has
            self.fail(400, "Bad Request: unsupported HTTP version")

    def _count_framing(self, framing: int) -> None:
        self._framing += framing
        if self._framing > self.limits.max_chunk_ext + _CHUNK_FRAMING * self._chunks:
            self.fail(400, "Bad Request: chunk extensions too large")

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        # a ClientError raised in our callbacks (414, 431, 413, 417) reaches us wrapped
        # in HttpParserCallbackError
        cause = exc.__context__
        if isinstance(cause, ClientError):
            self.fail(cause.status, cause.text)
            return
        if isinstance(cause, _PipelineFull):
            # the requests queued so far are answered; the last says Connection: close
            # and the connection ends there (RFC 9112 9.3.2: the client retries the rest)
            self._overflow = True
            self.parsing = None
            self.pipeline[-1].keep_alive = False
            return
        self.server.rejected("bad_request")
        log.debug("bad request from %s: %s", self.peer, exc)
        if self.parsing is not None and self.active is self.parsing:
            self.parsing.body.fail(ClientError(400, "Bad Request: malformed body"))
            self.closing = True
        else:
            self.fail(400, "Bad Request")

    def eof_received(self) -> bool:
        if self.tunnel_eof is not None:
            self.tunnel_eof()
            return True
        active = self.active
        if active is not None and active.waiting and self._task is not None:
            # the client left while its request waited for a slot: drop it (nginx does
            # the same: 499). A half-close after the request was forwarded is routine.
            self._task.cancel()
        if self.parsing is not None:
            self.parsing.body.fail(ConnectionResetError("client closed mid-request"))
        # half-close: finish the request in flight, then close
        self.closing = True
        return self.active is not None

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if len(self.pipeline) >= self.limits.max_pipelined:
            raise _PipelineFull
        self.parsing = Request(self)
        self._in_head = True
        self._head_raw = 0
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._framing = 0
        self._chunks = 0
        if not self._got_bytes:
            self._got_bytes = True
            self._arm(self.limits.header_timeout, idle=False)

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        assert self.parsing is not None
        self._url_len += len(url)
        if self._url_len > self.limits.max_url:
            raise ClientError(414, "URI Too Long")
        self.parsing.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._synthetic:
            return
        assert self.parsing is not None
        self._header_count += 1
        size = len(name) + len(value) + 4
        self._header_bytes += size
        if self._header_count > self.limits.max_headers:
            raise ClientError(431, "Request Header Fields Too Large: too many headers")
        if self._header_bytes > self.limits.max_header_bytes:
            raise ClientError(431, "Request Header Fields Too Large")
        if self._in_head:
            self.parsing.headers.append((name, value))
        else:  # chunked trailers: counted against the header limits, then dropped
            self._framing -= size

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        req = self.parsing
        assert req is not None
        self._got_bytes = False
        self._in_head = False
        self._disarm()
        req.method = self.parser.get_method().decode("ascii")
        req.version = self.parser.get_http_version()
        req.keep_alive = bool(self.parser.should_keep_alive())
        validate(req, self.server.authority)
        req.upgrade = (
            self.server.upgrade is not None
            and bool(self.parser.should_upgrade())
            and tunnelled(req)
        )
        limit = self.limits.max_body
        if req.content_length is not None and limit and req.content_length > limit:
            raise ClientError(413, "Content Too Large: the body exceeds the limit")
        # the Body made with the Request has seen nothing yet; its clock (min-rate) starts now
        req.body.started = time.monotonic()
        if not req.chunked and not req.content_length:
            req.body.complete = True
        if self.active is None:
            self._run(req)
        else:
            self.pipeline.append(req)
            self.flow.pause(PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body.feed(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        req = self.parsing
        if (
            req is not None
            and not req.upgrade
            and not req.body.complete
            and not self._synthetic
            and self._continuation is None
            and self.parser.should_upgrade()
        ):
            # llhttp skipped the body of an upgrade request: it is read next, framed by
            # the request's own CL/TE, never parsed as a request (HttpParserUpgrade follows)
            self._continuation = req
            return
        if req is not None:
            req.body.finish()
            if req.upgrade:
                self._upgrading = req  # llhttp raises HttpParserUpgrade next
        self.parsing = None
        self._continuation = None

    def _after_upgrade_head(self, rest: bytes) -> None:
        """llhttp stopped after a head with Upgrade. Ours to tunnel: hold what follows
        until the instance answers. Anything else: go on parsing HTTP with a fresh parser
        (first the skipped body of that request, if it has one)."""
        req = self._continuation
        self.parser = httptools.HttpRequestParser(self)
        if req is not None:
            framing = (
                b"Transfer-Encoding: chunked"
                if req.chunked
                else b"Content-Length: %d" % (req.content_length or 0)
            )
            self._synthetic = True
            try:
                self.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
            finally:
                self._synthetic = False
            self.parsing = req
        elif self._upgrading is not None:
            # whether it runs now or waits behind a pipelined request, nothing after
            # the handshake is parsed or forwarded before the instance says 101
            self._upgrading = None
            self.held = bytearray(rest)
            self._disarm()
            return
        if rest:
            self.data_received(rest)

    def take_held(self) -> bytes:
        """The 101 came: bytes held since the upgrade head, and the tunnel takes over."""
        data = bytes(self.held or b"")
        self.held = None
        self.flow.resume(HELD)
        return data

    # -- running handlers ----------------------------------------------------------------

    def _run(self, req: Request) -> None:
        self.active = req
        if req.upgrade and self.server.upgrade is not None:
            self._task = self.server.tasks.spawn(self._run_upgrade(req), "upgrade")
        else:
            self._task = self.server.tasks.spawn(self._handle(req), "request")

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
        self._task = None
        if not req.body.complete:
            # an unread body would be parsed as the next request: close instead, but
            # lingering, so the client still reads our answer (413, 408, ...)
            self.linger()
            return
        if not req.keep_alive or self.closing or self.draining:
            self.close()
            return
        if self.pipeline:
            self._run(self.pipeline.popleft())
            if not self.pipeline and self._broken is None:
                self.flow.resume(PIPELINE)
            return
        if self._broken is not None:
            self.fail(self._broken.status, self._broken.text)
            return
        self.flow.resume(PIPELINE)
        if self.parsing is None:
            self._arm(self.limits.keepalive_timeout, idle=True)
        elif self._timer is None:
            # the next head's deadline passed while this request ran (_expired skips an
            # active connection): it gets a fresh one now rather than none
            self._arm(self.limits.header_timeout, idle=False)
        self.server.idle_changed()

    async def _run_upgrade(self, req: Request) -> None:
        assert self.server.upgrade is not None
        try:
            await self.server.upgrade(req)
        except ClientError as exc:
            if not req.response_started:
                req.respond(exc.status, exc.text)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("upgrade failed")
        finally:
            # a refused upgrade does not go back to HTTP: what the client sent after the
            # handshake was never parsed, so the connection ends with the answer
            self.active = None
            self._task = None
            self.close()

    # -- i/o helpers ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client connection closed")
        if not await self.flow.drain(self.limits.send_timeout):
            raise ConnectionResetError("client did not read the response in time")
        if self.transport.is_closing():
            raise ConnectionResetError("client connection closed")

    def fail(self, status: int, text: str) -> None:
        """Answer a broken request (if no response started) and close."""
        active = self.active
        if active is None:
            self._broken = None
            self.server.rejected(f"http_{status}")
            tmp = Request(self)
            tmp.keep_alive = False
            if self.parsing is not None:
                # an answer to HEAD has no body, even an error answer
                tmp.method = self.parsing.method or self.parser.get_method().decode("latin-1")
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
            self.flow.pause(PIPELINE)

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
        self.flow.resume(~0)  # data_received discards while closing
        self._timer = self.loop.call_later(_LINGER, self.abort)

    def abort(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    # -- deadlines -----------------------------------------------------------------------

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
        """Stop accepting, close idle connections, let active requests finish (bodies
        still arriving included)."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while True:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
                else:
                    conn.draining = True  # no keep-alive after the current response
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
