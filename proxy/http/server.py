"""The client-facing HTTP/1.1 server: keep-alive and pipelining, one handler at a time,
deadlines per connection, lingering close (framing and its bounds: request_reader.py, whose
events this acts on; requests and the writing of responses: request.py).

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
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from forkproxy.backends.support.tasks import TaskSet
from forkproxy.proxy.http.chunks import Budget
from forkproxy.proxy.http.deadline import Deadline
from forkproxy.proxy.http.flow import HELD as HELD_BYTES
from forkproxy.proxy.http.flow import PIPELINE, Flow
from forkproxy.proxy.http.limits import Limits
from forkproxy.proxy.http.phase import (
    BROKEN,
    CLOSED,
    CLOSING,
    HEAD,
    HELD,
    LINGER,
    NEXT,
    OVERFLOW,
    TUNNEL,
    WAIT,
    Phase,
    step,
)
from forkproxy.proxy.http.request import BUDGET_SPENT, ClientError, Request
from forkproxy.proxy.http.request_reader import (
    END,
    TOO_LARGE,
    TOO_LARGE_TEXT,
    Event,
    Failed,
    RequestReader,
    UpgradeHead,
)
from forkproxy.proxy.http.request_reader import OVERFLOW as TOO_MANY

__all__ = ["ClientError", "HttpConnection", "HttpServer", "Request"]

log = logging.getLogger("forkproxy.http")

_MAX_HELD = 64 * 1024  # bytes after an upgrade head kept until the 101 (then reading pauses)
_LINGER = 2.0  # seconds to drain a client's input after an error answer
# shutting down: how long a connection accepted but not yet sent a byte is given to send
# its first request (answered with Connection: close). Closing it at once resets a client
# whose request was already on its way: it never had an answer to retry from
_FIRST_REQUEST_GRACE = 1.0
_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Handler = Callable[[Request], Awaitable[None]]
Upgrade = Callable[[Request], Awaitable[None]]


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs one handler at a time (pipelined
    requests wait their turn), enforces deadlines. Its `phase` (phase.py) says what the
    client's bytes are for and how far the connection is from closing; what serves the
    requests (active, pipeline, the task) is a queue beside it, not a phase."""

    def __init__(self, server: HttpServer) -> None:

        self.server = server
        self.limits = server.limits
        self.buffered = server.buffered
        self.spooled = server.spooled
        self.loop = asyncio.get_running_loop()
        self.flow = Flow()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.sent = 0  # bytes written to the client (the access log's bytes)
        self.active: Request | None = None
        # the task serving this connection's requests (_serve), or its upgrade's
        self._task: asyncio.Task[None] | None = None
        self._serving = False  # _serve runs (a request, or waiting for the next one)
        self._next: asyncio.Future[Request] | None = None  # _serve waits for a request
        self.pipeline: collections.deque[Request] = collections.deque()
        # what the client's bytes are for and how far from closing (phase.py); moved
        # only by _to()
        self.phase: Phase = WAIT
        # shutting down: finish what is in flight, no keep-alive. Not a phase: the server
        # orders it whatever the connection is doing (a head or a body may be arriving)
        self.draining = False
        # BROKEN: the error owed to the request that broke behind a pipelined one
        self._broken: ClientError | None = None
        # One deadline per connection (header read, keep-alive idle), on one timer moved
        # lazily (deadline.py); in WAIT it closes silently, in HEAD it answers 408
        self._deadline = Deadline(self.loop, self._on_deadline)
        self._linger: asyncio.TimerHandle | None = None
        # set by the tunnel (tunnel.py) just before take_held(): TUNNEL's ends
        self.tunnel: Callable[[bytes], None] | None = None
        self.tunnel_eof: Callable[[], None] | None = None
        self.reader = RequestReader(
            self.limits, server.authority, self._request, upgrades=server.upgrade is not None
        )
        self._receiving: Request | None = None  # the request whose body events are for
        # HELD: bytes after a websocket head, until the instance answers 101
        self.held: bytearray | None = None

    def _to(self, wanted: Phase) -> None:
        current = self.phase
        # a move the table lists is one lookup here (two happen per request); step() for
        # the rest: closing again, or a bug
        self.phase = wanted if wanted in NEXT[current] else step(current, wanted)

    @property
    def closing(self) -> bool:
        """No further request: the one in flight answers with Connection: close."""
        return self.phase >= CLOSING  # the ending phases come last (phase.py)

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.attach(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if len(self.server.connections) >= self.limits.max_connections:
            self.server.rejected("max_connections")
            self.transport.write(_TOO_MANY)
            self.transport.close()
            self._to(CLOSING)
            return
        self.server.connections.add(self)
        # listen() names the authority once the socket is bound: a connection made by
        # then (its factory ran first) reads it now
        self.reader.authority = self.server.authority
        # a fresh connection gets header_timeout for its first byte (HAProxy's timeout
        # http-request); closed silently if nothing came (WAIT), like an idle keep-alive one
        self._deadline.arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._to(CLOSED)
        self.server.connections.discard(self)
        self._cancel_timers()
        for req in (self.reader.parsing, self.active, *self.pipeline):
            if req is not None:
                req.body.fail(ConnectionResetError("client closed the connection"))
                req.body.discard()
        if self.tunnel_eof is not None:
            self.tunnel_eof()
        task = self._task
        if task is not None and not task.done():
            # the client is gone: a request held for a slot leaves the queue (no demand,
            # never forwarded); one in flight is dropped and its slot released
            task.cancel()
        if self._next is not None:
            self._next.cancel()  # _serve waiting behind an upgrade's task ends too
        self.flow.wake()
        self.server.idle_changed()

    def eof_received(self) -> bool:
        if self.phase is TUNNEL:
            assert self.tunnel_eof is not None
            self.tunnel_eof()
            return True
        active = self.active
        if active is not None and active.waiting and self._task is not None:
            # the client left while its request waited for a slot: drop it (nginx does
            # the same: 499). A half-close after the request was forwarded is routine.
            self._task.cancel()
        parsing = self.reader.parsing
        if parsing is not None:
            parsing.body.fail(ConnectionResetError("client closed mid-request"))
        # half-close: finish the request in flight, then close
        self._to(CLOSING)
        return self.active is not None

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is not WAIT and phase is not HEAD:
            self._not_parsed(data)
            return
        reader = self.reader
        if phase is WAIT and reader.parsing is None:
            self._head_begins()
        reader.queued = len(self.pipeline) + (self.active is not None)
        # dispatched inline, most frequent first: the data path's hottest loop
        for event in reader.feed(data):
            if event is END:
                req = self._receiving
                if req is not None:
                    req.body.finish()
                    self._receiving = None
            elif type(event) is Request:
                if not self._head(event):
                    return
            elif type(event) is bytes:
                if self._receiving is not None:
                    self._receiving.body.feed(event)
            elif not self._on_event(event):
                return
        if reader.in_head and self.phase is WAIT:
            self._head_begins()  # after the last one ended, in the same read

    def _head_begins(self) -> None:
        self._to(HEAD)
        self._deadline.arm(self.limits.header_timeout)

    def _not_parsed(self, data: bytes) -> None:
        """Bytes outside HTTP framing: the tunnel's, held for it, or dropped (reading
        stopped, or closing: a lingering close discards input on purpose)."""
        phase = self.phase
        if phase is TUNNEL:
            assert self.tunnel is not None
            self.tunnel(data)
        elif self.held is not None:  # HELD, or a client that half-closed meanwhile
            self.held += data
            if len(self.held) > _MAX_HELD:
                self.flow.pause(HELD_BYTES)

    def _on_event(self, event: Event) -> bool:
        """The reader's rarer events; False once nothing more of this read counts."""
        if event is TOO_LARGE:
            if self._receiving is not None:
                self._receiving.body.fail(ClientError(413, TOO_LARGE_TEXT))
            return True
        if isinstance(event, Failed):
            self._failed(event)
        elif isinstance(event, UpgradeHead):
            # whether it runs now or waits behind a pipelined request, nothing after
            # the handshake is parsed or forwarded before the instance says 101
            self.held = bytearray(event.rest)
            self._to(HELD)
            self._disarm()
        elif event is TOO_MANY:
            # the requests queued so far are answered; the last says Connection: close
            self._to(OVERFLOW)
            self.pipeline[-1].keep_alive = False
        return False

    def _head(self, req: Request) -> bool:
        self._to(WAIT)
        self._disarm()
        if req.content_length and not req.body.charge(
            min(req.content_length, self.limits.body_buffer)
        ):
            self.fail(BUDGET_SPENT.status, BUDGET_SPENT.text, req.method, req)
            return False
        # the Body made with the Request has seen nothing yet; its clock (min-rate) starts now
        req.body.started = time.monotonic()
        if not req.chunked and not req.content_length:
            req.body.complete = True
        self._receiving = req
        if self.active is None:
            self._run(req)
        else:
            self.pipeline.append(req)
            self.flow.pause(PIPELINE)
        return True

    def _failed(self, failed: Failed) -> None:
        if not failed.malformed:
            self.fail(failed.status, failed.text, failed.method, failed.req)
            return
        self.server.rejected("bad_request")
        log.debug("bad request from %s: %s", self.peer, failed.detail)
        req = failed.req
        if req is not None and self.active is req:
            req.body.fail(ClientError(400, "Bad Request: malformed body"))
            self._to(CLOSING)
        else:
            self.fail(failed.status, failed.text, failed.method, req)

    def take_held(self) -> bytes:
        """The 101 came: bytes held since the upgrade head, and the tunnel takes over."""
        data = bytes(self.held or b"")
        self.held = None
        if self.phase is HELD:  # else the client half-closed meanwhile: it stays closing
            self._to(TUNNEL)
        self.flow.resume(HELD_BYTES)
        return data

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- running handlers ----------------------------------------------------------------

    def _request(self) -> Request:
        return Request(self)

    def _run(self, req: Request) -> None:
        self.active = req
        if req.upgrade and self.server.upgrade is not None:
            self._task = self.server.tasks.spawn(self._run_upgrade(req), "upgrade")
            return
        nxt = self._next
        if nxt is not None:
            self._next = None
            if not nxt.done():
                nxt.set_result(req)  # the connection's task waits for its next request
                return
        if not self._serving:  # else the running task takes it next (pipelined, _finished)
            self._task = self.server.tasks.spawn(self._serve(req), "request")

    async def _serve(self, req: Request) -> None:
        """The connection's requests one after another, in one task for the connection:
        a task per request (creation, registration, a done callback) was a measurable
        share of a request. Ends with the connection, or when an upgrade takes over."""
        self._serving = True
        try:
            while await self._handle(req):
                nxt = self.active  # a pipelined request _finished started
                if nxt is None:
                    self._next = self.loop.create_future()
                    nxt = await self._next
                if nxt.upgrade and self.server.upgrade is not None:
                    return  # _run gave it to an upgrade task
                req = nxt
        finally:
            self._serving = False
            self._next = None

    async def _handle(self, req: Request) -> bool:
        """Run the handler for `req`; True if the connection serves another request."""
        try:
            await self.server.handler(req)
        except ClientError as exc:
            if not req.response_started:
                req.keep_alive = False
                req.respond(exc.status, exc.text)
            self._to(CLOSING)
        except ConnectionError as gone:  # the client went away or stopped reading: routine
            log.debug("client %s: %s", self.peer, gone)
            self.abort()
            return False
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception:
            log.exception("handler failed")
            if not req.response_started:
                req.keep_alive = False
                req.respond(500, "Internal Server Error")
            self.abort()
            return False
        return self._finished(req)

    def _finished(self, req: Request) -> bool:
        self.active = None
        req.body.discard()  # what the instance did not read (it answered early) is dropped
        if not req.body.complete:
            # an unread body would be parsed as the next request: close instead, but
            # lingering, so the client still reads our answer (413, 408, ...)
            self.linger()
            return False
        if not req.keep_alive or self.closing or self.draining:
            self.close()
            return False
        if self.pipeline:
            self._run(self.pipeline.popleft())
            if not self.pipeline and self.phase is not BROKEN:
                self.flow.resume(PIPELINE)
            return True
        broken = self._broken
        if self.phase is BROKEN and broken is not None:
            self.fail(broken.status, broken.text)
            return False
        self.flow.resume(PIPELINE)
        if self.reader.parsing is None:
            # keep-alive idle, silent in WAIT (a stray byte after the last request made
            # it HEAD: that still answers 408, as any head begun)
            self._deadline.arm(self.limits.keepalive_timeout)
        elif self._deadline.due is None:
            # the next head's deadline passed while this request ran (_on_deadline skips an
            # active connection): it gets a fresh one now rather than none
            self._head_begins()
        self.server.idle_changed()
        return True

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
            self.sent += len(data)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client connection closed")
        if not await self.flow.drain(self.limits.send_timeout):
            raise ConnectionResetError("client did not read the response in time")
        if self.transport.is_closing():
            raise ConnectionResetError("client connection closed")

    def rejected(self, reason: str) -> None:
        self.server.rejected(reason)

    def fail(
        self, status: int, text: str, method: str | None = None, req: Request | None = None
    ) -> None:
        """Answer a broken request (if no response started) and close. `req`, `method`:
        the request that broke and its method (default: the one being read)."""
        if method is None:
            req = self.reader.parsing
            method = self.reader.method()
        active = self.active
        if active is None:
            self._broken = None
            self.server.rejected(f"http_{status}")
            tmp = Request(self)
            tmp.keep_alive = False
            tmp.method = method  # an answer to HEAD has no body, even an error answer
            tmp.respond(status, text)
            self.linger()
        elif not active.body.complete:
            # the active request's own body broke: its handler answers the error
            active.body.fail(ClientError(status, text))
            self._to(CLOSING)
        else:
            # a pipelined request broke: answer the ones before it, then this error
            self._to(BROKEN)
            self._broken = ClientError(status, text)
            if req is not None and req in self.pipeline:
                self.pipeline.remove(req)
            self.reader.drop()
            self.flow.pause(PIPELINE)

    def close(self) -> None:
        self._to(CLOSING)
        self._cancel_timers()
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
        self._to(LINGER)
        self._cancel_timers()
        t.write_eof()
        self.flow.resume(~0)  # data_received discards while closing
        self._linger = self.loop.call_later(_LINGER, self.abort)

    def abort(self) -> None:
        self._to(CLOSING)
        self._cancel_timers()
        if self.transport is not None:
            self.transport.abort()

    # -- deadlines -----------------------------------------------------------------------

    def _disarm(self) -> None:
        self._deadline.disarm()

    def _cancel_timers(self) -> None:
        """The connection is done: no timer may keep it alive until it fires."""
        self._deadline.cancel()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _on_deadline(self) -> None:
        if self.active is not None:
            return
        if self.phase is WAIT:
            self.close()  # an idle keep-alive connection: nothing to answer
            return
        self.server.rejected("header_timeout")
        self.fail(408, "Request Timeout")

    @property
    def idle(self) -> bool:
        return self.active is None and self.reader.parsing is None


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
        self.buffered = Budget(limits.max_buffered)  # request-body bytes held, all connections
        self.spooled = Budget(limits.max_spooled)  # request-body bytes on disk, all connections
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

    async def listen(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Listen on host:port, or on `sock`, a listening socket opened elsewhere (socket
        activation, SO_REUSEPORT); host names it in the Host of HTTP/1.0 requests."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: HttpConnection(self), sock=sock)
        else:
            self._server = await loop.create_server(
                lambda: HttpConnection(self), host, port, reuse_address=True, backlog=1024
            )
        # uvloop's Server.sockets is a list where typeshed says tuple: as Any, so a mypyc
        # build (README: Performance) does not reject it
        server: Any = self._server
        self.port = int(server.sockets[0].getsockname()[1])
        name = f"[{host}]" if ":" in host else host
        self.authority = f"{name}:{self.port}".encode("ascii", "replace")

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let active requests finish (bodies
        still arriving included)."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        first_until = time.monotonic() + min(grace, _FIRST_REQUEST_GRACE)
        while True:
            waiting = time.monotonic() < first_until
            busy = False
            for conn in list(self.connections):
                if not conn.idle:
                    conn.draining = True  # no keep-alive after the current response
                    busy = True
                elif waiting and not conn.sent:
                    # accepted, nothing answered yet: its first request may be in flight
                    conn.draining = True
                    busy = True
                else:
                    conn.close()  # idle between requests: a keep-alive client retries
            if not busy:
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
