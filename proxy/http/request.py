"""A client's request as the server hands it to the data path: its head, its body read
in pieces with backpressure and deadlines, and the writing of its response (framed by
us: Content-Length, chunked, or close-delimited for HTTP/1.0)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Protocol

from forkproxy.proxy.http.chunks import HIGH_WATER, Budget, ChunkQueue
from forkproxy.proxy.http.flow import Flow
from forkproxy.proxy.http.limits import Limits
from forkproxy.proxy.http.spool import Spool


class Held(Protocol):
    """What the data path tells a request of the instance slot it got (the access log
    reads it): the protocol library names no pool type."""

    queued: float
    cold: bool

    @property
    def instance_id(self) -> str: ...


REASONS = {
    100: b"Continue",
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

_RATE_GRACE = 5.0  # seconds before body_min_rate applies (a slow start is not an attack)


class ClientError(Exception):
    """The client broke a rule; answer `status` (if nothing was sent yet) and close."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# one instance: raised for every body turned away, it carries no per-request state
BUDGET_SPENT = ClientError(503, "Service Unavailable: too many request bodies waiting")


class Writer(Protocol):
    """What a request needs of its connection: where its response goes, the flow of the
    client's bytes, and the bounds and budget its body is read under. HttpConnection
    (server.py) is one; a request never sees the rest of it."""

    limits: Limits
    flow: Flow
    buffered: Budget  # request-body bytes held, all connections
    spooled: Budget  # request-body bytes on disk, all connections
    peer: str
    draining: bool
    sent: int  # bytes written to the client so far (the access log's bytes)
    # after a 101: the tunnel's ends (tunnel.py)
    tunnel: Callable[[bytes], None] | None
    tunnel_eof: Callable[[], None] | None

    @property
    def closing(self) -> bool: ...  # no further request: answer with Connection: close

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def abort(self) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def take_held(self) -> bytes: ...


class Body:
    """A request body as the client sends it, read in pieces with backpressure."""

    def __init__(self, conn: Writer) -> None:
        self._conn = conn
        limits = conn.limits
        high = max(HIGH_WATER, limits.body_buffer)  # a read-ahead fills without pausing
        self._chunks = ChunkQueue(conn.flow, high)
        self._budget = conn.buffered
        self._charged = 0  # bytes of the budget this body holds while it waits
        self.received = 0
        self.complete = False
        self.error: Exception | None = None
        self.on_first_read: Callable[[], None] | None = None  # sends 100 Continue
        self.started = 0.0  # set when the head is complete (server.py): the rate's clock
        self._base = 0  # bytes received when the rate's clock was last set
        self.streaming = False  # read by the forwarder: it holds an instance slot
        self._spool: Spool | None = None  # the body's head on disk (prefetch), read first

    def feed(self, data: bytes) -> None:
        """Body bytes as framed (max_body is the reader's: request_reader.py)."""
        self.received += len(data)
        if not self.streaming and not self.charge(self._chunks.buffered + len(data)):
            self.fail(BUDGET_SPENT)
            return
        self._chunks.push(data)

    def charge(self, total: int) -> bool:
        """Hold `total` bytes of the budget for this waiting body (a declared length is
        held at the head, so bodies arriving together cannot each get part of the
        budget and all be refused); False, and the body is counted as refused, when
        waiting bodies already hold it all."""
        extra = total - self._charged
        if extra <= 0:
            return True
        if not self._budget.fits(extra):
            self._conn.rejected("buffered_bytes")
            return False
        self._budget.used += extra
        self._charged = total
        return True

    def _uncharge(self) -> None:
        self._budget.used -= self._charged
        self._charged = 0

    def slot_taken(self) -> None:
        """The request holds an instance slot from now on: the rate is measured afresh,
        so what was read ahead buys no time while a slot is held."""
        if self.started and not self.complete:
            self.started = time.monotonic()
            self._base = self.received

    def discard(self) -> None:
        """The request is over: whatever is still queued is released (budget included)."""
        self._chunks.discard()
        self._uncharge()
        if self._spool is not None:
            self._spool.close()

    def finish(self) -> None:
        self.complete = True
        self._chunks.wake()

    def fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
            self._chunks.wake()

    async def read(self) -> bytes:
        """What arrived since the last read, as one piece (many small chunks leave as one
        write to the instance), or b"" at the end."""
        if not self.streaming:
            # it holds a slot now: flow control bounds what it buffers, not the budget
            self.streaming = True
            self._uncharge()
        if self.on_first_read is not None:
            self.on_first_read()
            self.on_first_read = None
        if self._spool is not None:  # what was spooled comes first, then what is queued
            data = await self._spool.read()
            if data:
                return data
            self._spool.close()
            self._spool = None
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()
        data = self._chunks.take_all()
        self._check_rate()
        return data

    async def prefetch(self, limit: int, spool: int = 0) -> None:
        """Wait until the body is complete or `limit` bytes are buffered, so a slow
        client holds no instance slot while it dribbles a small body (nginx buffers
        request bodies for the same reason). With `spool`, a body up to that size is
        read whole, what passes `limit` going to a temp file (spool.py); one that grows
        past it, or past the disk budget, returns there and streams. Same deadlines as
        read()."""
        while True:
            # a body refused while it arrived (413, 503) may still be complete: llhttp
            # counted its bytes; the error wins
            if self.error is not None:
                raise self.error
            if self.complete:
                return
            if self._chunks.buffered >= limit:
                if not spool or not await self._spool_queued(spool):
                    return
                continue
            await self._wait()

    async def _spool_queued(self, limit: int) -> bool:
        """What is queued, moved to the spool; False (and it stays queued) when the body
        would pass `limit` or the spooled bytes of all connections their budget."""
        spool = self._spool
        if spool is None:
            spool = self._spool = Spool(self._conn.spooled)
        if not spool.fits(self._chunks.buffered, limit):
            return False
        try:
            await spool.append(self._chunks.take_all())
        except OSError as exc:  # the disk is full or failing: this request cannot go on
            self._conn.rejected("spool_failed")
            raise ClientError(503, "Service Unavailable: cannot buffer the request body") from exc
        return True

    async def _wait(self) -> None:
        stall = self._conn.limits.body_timeout
        slow = self._rate_due() - time.monotonic()
        try:
            async with asyncio.timeout(min(stall, max(0.0, slow))):
                await self._chunks.wait()
        except TimeoutError:
            if slow < stall:
                raise ClientError(408, "Request Timeout: the body is arriving too slowly") from None
            raise ClientError(408, "Request Timeout: the body stalled") from None
        self._check_rate()

    def _rate_due(self) -> float:
        """When the body falls below body_min_rate unless more arrives: a client that
        dribbles a byte now and then is cut then, not at its next byte (which may be many
        seconds later). +inf without a rate, or before the head set the clock."""
        rate = self._conn.limits.body_min_rate
        if not rate or not self.started:
            return math.inf
        return self.started + max(_RATE_GRACE, (self.received - self._base) / rate)

    def _check_rate(self) -> None:
        if not self.complete and time.monotonic() > self._rate_due():
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
        "lease",
        "method",
        "path",
        "request_id",
        "response_started",
        "started",
        "status",
        "upgrade",
        "version",
        "waiting",
    )

    def __init__(self, conn: Writer) -> None:
        self.conn = conn
        self.method = ""
        self.path = b""  # origin-form, byte for byte as sent
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False  # a websocket handshake the proxy tunnels
        self.expect_continue = False
        self.waiting = False  # held for an instance slot (the data path sets it)
        self.response_started = False
        self.status = 0  # the status this proxy answered (0: none yet)
        self.started = time.monotonic()
        self.body: Body = Body(conn)
        self._chunked_out = False
        # set only with server.access_log (proxy/logs.py): the id returned on the response
        self.request_id: bytes | None = None
        self.lease: Held | None = None  # the instance slot it got, for the access log

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
        keep = self.keep_alive and not conn.closing and not conn.draining
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))]
        for name, value in headers:  # joined once below: no bytes built per header
            parts += (name, b": ", value, b"\r\n")
        if self.request_id is not None and not any(
            n.lower() == b"x-request-id" for n, _ in headers
        ):
            parts += (b"X-Request-ID: ", self.request_id, b"\r\n")
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
        if payload and self.method != "HEAD":  # an answer to HEAD never has a body
            parts.append(payload)  # head and a small body in one write
        conn.write(b"".join(parts))

    def informational(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx (103 Early Hints) ahead of the response: HTTP/1.1 clients only, since
        an HTTP/1.0 client cannot tell it from the response (RFC 9110 15.2)."""
        if self.version != "1.1" or self.response_started:
            return
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or b"Informational")]
        parts.extend(n + b": " + v + b"\r\n" for n, v in headers)
        parts.append(b"\r\n")
        self.conn.write(b"".join(parts))

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
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Date", date())]
        if extra:
            headers.extend(extra)
        elif status == 503:  # every 503 here is a moment's overload: say when to retry
            headers.append((b"Retry-After", b"1"))
        self.start_response(status, b"", headers, length=len(body), payload=body)


_date_cache: tuple[int, bytes] = (0, b"")


def date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]
