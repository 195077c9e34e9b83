"""Flow control for one asyncio transport, both directions, shared by the client-facing
connection (server.py) and the instance-facing one (upstream.py).

Reading is paused while any reason holds (a body buffer above its high-water mark,
queued pipelined requests, bytes held for an upgrade, a tunnel peer not reading) and
resumes only when none does, so one reason ending never undoes another. Writing follows
asyncio's pause_writing/resume_writing; drain() waits for it with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

# reasons to stop reading (bits)
BODY = 1  # a body's ChunkQueue is above its high-water mark
PIPELINE = 2  # a request is queued behind the running one
HELD = 4  # bytes after an upgrade head wait for the instance's 101
PEER = 8  # the other side of a tunnel is not keeping up


class Flow:
    __slots__ = ("_drain", "_paused_by", "on_writable", "transport", "write_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._paused_by = 0
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.on_writable: Callable[[], None] | None = None  # a tunnel resumes its peer

    def attach(self, transport: asyncio.BaseTransport) -> asyncio.Transport:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        return self.transport

    # -- reading -------------------------------------------------------------------------

    def pause(self, reason: int) -> None:
        was = self._paused_by
        self._paused_by = was | reason
        if not was and self.transport is not None:
            self.transport.pause_reading()

    def resume(self, reason: int) -> None:
        if self._paused_by & reason:
            self._paused_by &= ~reason
            t = self.transport
            if not self._paused_by and t is not None and not t.is_closing():
                t.resume_reading()

    def paused(self, reason: int = ~0) -> bool:
        return bool(self._paused_by & reason)

    # -- writing -------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake()
        if self.on_writable is not None:
            self.on_writable()

    def wake(self) -> None:
        """Release a waiting drain() (the buffer emptied, or the connection is gone)."""
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    async def drain(self, limit: float) -> bool:
        """Until the peer has read enough of what we wrote; False if `limit` seconds passed.
        Callers check whether the connection closed meanwhile."""
        if not self.write_paused:
            return True
        self._drain = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(limit):
                await self._drain
        except TimeoutError:
            return False
        finally:
            self._drain = None
        return True
