"""A lean HTTP/1.1 client for talking to instances: keep-alive connections per
endpoint, responses framed from the bytes by response_reader.py, both bodies streamed
with flow control, and websocket upgrades (after a 101 the connection carries raw bytes).

A response owns exactly its bytes: each response gets its own parser, and any byte the
instance sends after a response whose end is known (a HEAD answer, 204, 304, a
Content-Length or chunked body) breaks the connection: it is closed, never pooled (the
rule h11's state machine enforces). A connection goes back to the pool only at a message
boundary with nothing buffered and reading not paused.

Why not aiohttp's client: building a ClientRequest/ClientResponse costs more than
the rest of the proxy together (measured: 0.19x direct throughput with it). Here the
request head is written as bytes the data path already filtered, nothing is added."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable

from forkproxy.backends.base import Endpoint
from forkproxy.proxy.http.deadline import Deadline
from forkproxy.proxy.http.errors import (
    BadResponse,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    ReadTimeout,
    SendTimeout,
    UpstreamError,
)
from forkproxy.proxy.http.flow import Flow
from forkproxy.proxy.http.response import InfoHook, Response
from forkproxy.proxy.http.response_reader import (
    END,
    HEAD,
    STRAY,
    Broken,
    Info,
    ResponseReader,
    Trailing,
)

__all__ = [
    "BadResponse",
    "ConnectFailed",
    "ConnectTimeout",
    "Connection",
    "Disconnected",
    "ReadTimeout",
    "Response",
    "SendTimeout",
    "UpstreamClient",
    "UpstreamError",
]

_MAX_IDLE_PER_ENDPOINT = 64


class Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, key: Endpoint, stall: float) -> None:
        self.loop = loop
        self.key = key
        self.stall = stall  # seconds the instance may go silent mid-body (either way)
        self.flow = Flow()
        self.resp: Response | None = None
        # one per connection, a fresh parser inside per response (response_reader.py)
        self.reader = ResponseReader()
        self.closed = False
        self.reused = False
        self.sent = False
        # never pool: the response came before the whole request body was sent, or the
        # request asked for an upgrade (refused or not), or the instance sent stray bytes
        self.no_reuse = False
        # after a 101: raw bytes from the instance go here (the tunnel), not to a parser
        self.sink: Callable[[bytes], None] | None = None
        self.on_eof: Callable[[], None] | None = None
        # the response head's deadline: one lazily moved timer per connection, not a
        # timer per request (deadline.py)
        self._head_deadline = Deadline(loop, self._head_late)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.flow.attach(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
            return
        resp = self.resp
        if resp is not None and resp.upgraded:  # after the 101, before the tunnel took over
            resp.trailing += data
            return
        if resp is None or resp.complete:
            # bytes nobody asked for: this connection is out of step with its requests
            self.no_reuse = True
            self.close()
            return
        resp.got_bytes = True
        reader = self.reader
        for event in reader.feed(data):  # most frequent first: the data path's hot loop
            if type(event) is bytes:
                resp.feed(event)
            elif event is HEAD:
                if resp.headers_done.done():
                    # the head deadline passed (its waiter gave up): nobody reads this
                    resp.fail(BadResponse("response head after its deadline", sent=True))
                    self.close()
                    return
                resp.status = reader.status
                resp.reason = reader.reason
                resp.raw_headers = reader.raw_headers
                resp.keep_alive = reader.keep_alive
                resp.until_close = reader.until_close
                resp.upgraded = reader.upgraded
                resp.headers_done.set_result(None)
            elif event is END:
                resp.finish()
            elif isinstance(event, Info):
                if resp.on_info is not None:
                    resp.on_info(event.status, event.reason, event.headers)
            elif isinstance(event, Trailing):
                resp.trailing = event.data
            elif isinstance(event, Broken):
                resp.fail(event.error)
                self.close()
                return
            elif event is STRAY:
                self.no_reuse = True
                self.close()
                return
        if reader.no_reuse:
            self.no_reuse = True

    def eof_received(self) -> bool:
        if self.on_eof is not None:
            self.on_eof()
            return True  # a tunnel half-closed by the instance: the client may still send
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._head_deadline.cancel()
        resp = self.resp
        if self.sink is not None and self.on_eof is not None:
            self.on_eof()
        if resp is not None and resp.until_close and resp.headers_done.done() and exc is None:
            resp.keep_alive = False
            resp.finish()  # a close-delimited body is complete at a clean EOF
        elif resp is not None and not resp.complete:
            if not resp.got_bytes and not resp.headers_done.done():
                # no byte of a response: a reused connection the instance had closed
                resp.fail(
                    Disconnected(
                        "closed before responding",
                        sent=self.sent,
                        stale=self.reused,
                        silent=True,
                    )
                )
            else:
                resp.fail(Disconnected("closed mid-response", sent=True))
        self.flow.wake()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- use -----------------------------------------------------------------------------

    async def drain(self, stall: float) -> None:
        if self.closed:
            raise Disconnected("closed while sending", sent=True)
        if not await self.flow.drain(stall):
            raise SendTimeout("instance stopped reading the request", sent=True)
        if self.closed:
            raise Disconnected("closed while sending", sent=True)

    def write(self, data: bytes) -> None:
        t = self.flow.transport
        assert t is not None
        self.sent = True
        if not self.closed:
            t.write(data)

    def write_eof(self) -> None:
        t = self.flow.transport
        if t is not None and not self.closed and t.can_write_eof():
            t.write_eof()

    def expect_head(self, seconds: float) -> None:
        """The response head must come within `seconds` (or it fails with TimeoutError)."""
        self._head_deadline.arm(seconds)

    def _head_late(self) -> None:
        resp = self.resp
        if resp is not None and not resp.headers_done.done():
            resp.headers_done.set_exception(TimeoutError())

    def close(self) -> None:
        self.closed = True
        self._head_deadline.cancel()
        if self.flow.transport is not None:
            self.flow.transport.close()

    @property
    def reusable(self) -> bool:
        """At a message boundary with nothing buffered (h11's start_next_cycle rule)."""
        resp = self.resp
        return (
            resp is not None
            and resp.complete
            and resp.error is None
            and resp.keep_alive
            and not resp.unread
            and not self.closed
            and not self.no_reuse
            and not self.flow.paused()
        )


class UpstreamClient:
    """Keep-alive connections per instance endpoint."""

    def __init__(
        self,
        connect_timeout: float,
        stall_timeout: float = 60.0,
        max_idle: Callable[[], int] | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        # the instance reads nothing of the request body / sends nothing of the response
        # body for this long: it is stuck (nginx proxy_send_timeout, proxy_read_timeout)
        self.stall_timeout = stall_timeout
        # idle connections kept per instance: at least the pool's max_concurrency (known once the
        # pool started). Fewer than the requests an instance takes at once means closing
        # and reopening connections under load: at 256 connections with 64 kept, that
        # churn cost the proxy ~40% more CPU a request (and the app its accepts).
        self._max_idle = max_idle
        self._idle: dict[Endpoint, list[Connection]] = {}

    async def _connect(self, ep: Endpoint) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: Connection(loop, ep, self.stall_timeout), ep.host, ep.port
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connect to {ep.url} timed out") from exc
        except OSError as failed:
            raise ConnectFailed(f"connect to {ep.url}: {failed.strerror or failed}") from failed
        return proto

    def _pooled(self, ep: Endpoint) -> Connection | None:
        idle = self._idle.get(ep)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def send(
        self,
        ep: Endpoint,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        head_only: bool,
        upgrade: bool = False,
        on_info: InfoHook | None = None,
    ) -> tuple[Connection, Response]:
        """Write the request (head + framed body) and return once it is sent.
        Await `resp.headers_done` for the response head. `upgrade`: a websocket
        handshake; if the instance answers 101, `resp.upgraded` is set and the
        connection is the caller's to use raw (`sink`, `write`)."""
        conn = self._pooled(ep) or await self._connect(ep)
        conn.sent = False
        conn.no_reuse = upgrade
        resp = conn.resp = Response(conn.flow, conn.loop, conn.stall, head_only, upgrade, on_info)
        conn._head_deadline.disarm()  # the last response's, if the caller never expected one
        conn.reader.start(head_only, upgrade)
        try:
            conn.write(head)
            if body is not None:
                async for chunk in body:
                    if resp.error is not None:
                        raise resp.error
                    if resp.headers_done.done() or conn.closed:
                        break
                    if not chunk:
                        continue
                    if chunked:
                        conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    else:
                        conn.write(chunk)
                    try:
                        await conn.drain(self.stall_timeout)
                    except Disconnected:
                        if resp.headers_done.done() and resp.error is None:
                            break  # it answered, then closed: the answer stands
                        raise
                else:
                    if chunked:
                        conn.write(b"0\r\n\r\n")
                    return conn, resp
                # it answered early (401, 413, ...) without waiting for the rest of the
                # body: relay that answer, stop sending, never reuse this connection
                if resp.error is not None:
                    raise resp.error
                if not resp.headers_done.done():
                    raise Disconnected("closed while sending", sent=True)
                conn.no_reuse = True
        except BaseException:
            conn.close()
            raise
        return conn, resp

    def release(self, conn: Connection) -> None:
        reusable = conn.reusable
        conn.resp = None
        if not reusable:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        limit = _MAX_IDLE_PER_ENDPOINT if self._max_idle is None else self._max_idle()
        if len(idle) >= limit:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, ep: Endpoint) -> None:
        """The instance is gone: close its idle connections."""
        for conn in self._idle.pop(ep, []):
            conn.close()

    def close(self) -> None:
        for ep in list(self._idle):
            self.forget(ep)
