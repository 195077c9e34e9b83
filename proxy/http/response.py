"""One response from an instance as the data path reads it: its head, its body in
pieces with flow control and a stall deadline. Framed from the instance's bytes by
response_reader.py; the connection (upstream.py) hands over what it framed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from forkproxy.proxy.http.chunks import ChunkQueue
from forkproxy.proxy.http.errors import ReadTimeout, UpstreamError
from forkproxy.proxy.http.flow import Flow
from forkproxy.proxy.http.response_reader import RawHeaders, content_length

InfoHook = Callable[[int, bytes, RawHeaders], None]


class Response:
    """One response being received. Read the body with `read()` until b"". `stall`:
    seconds the instance may go silent mid-body."""

    __slots__ = (
        "_chunks",
        "_stall",
        "complete",
        "error",
        "got_bytes",
        "head_only",
        "headers_done",
        "keep_alive",
        "on_info",
        "raw_headers",
        "reason",
        "status",
        "trailing",
        "until_close",
        "upgrade",
        "upgraded",
    )

    def __init__(
        self,
        flow: Flow,
        loop: asyncio.AbstractEventLoop,
        stall: float,
        head_only: bool,
        upgrade: bool,
        on_info: InfoHook | None,
    ) -> None:
        self._stall = stall
        self._chunks = ChunkQueue(flow)
        self.status = 0
        self.reason = b""
        self.raw_headers: RawHeaders = []
        self.keep_alive = False
        self.headers_done: asyncio.Future[None] = loop.create_future()
        self.complete = False
        self.error: UpstreamError | None = None
        self.head_only = head_only
        self.upgrade = upgrade  # the request asked for a websocket: a 101 is expected
        self.upgraded = False  # the instance answered 101: raw bytes from here on
        self.trailing = b""  # bytes after the 101 head, for the tunnel
        self.on_info = on_info  # 1xx other than 100/101 (103 Early Hints)
        self.got_bytes = False
        self.until_close = False  # no Content-Length, not chunked: the body ends at EOF

    def content_length(self) -> int | None:
        return content_length(self.raw_headers)

    def finish(self) -> None:
        self.complete = True
        self._chunks.wake()

    def fail(self, err: UpstreamError) -> None:
        if self.complete:
            return
        self.error = err
        if not self.headers_done.done():
            self.headers_done.set_exception(err)
            # whoever reads the response sees self.error; a future nobody awaited (the
            # send itself failed) must not log "exception was never retrieved"
            self.headers_done.exception()
        self._chunks.wake()

    def body_buffered(self) -> bytes | None:
        """The whole body if it already arrived with the headers (the common small case)."""
        if self.complete and self.error is None:
            return self._chunks.take_all()
        return None

    async def read(self) -> bytes:
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            try:
                async with asyncio.timeout(self._stall):
                    await self._chunks.wait()
            except TimeoutError:
                raise ReadTimeout("instance stopped sending the response", sent=True) from None
        return self._chunks.pop()

    def feed(self, data: bytes) -> None:
        self._chunks.push(data)

    @property
    def unread(self) -> bool:
        """Body bytes arrived that nobody read."""
        return bool(self._chunks)
