"""Body bytes waiting for their reader, with backpressure on the socket they came from:
reading pauses above the high-water mark and resumes below the low one (or when the
queue is emptied at once). Shared by the request bodies clients send (server.py) and the
response bodies instances send (upstream.py)."""

from __future__ import annotations

import asyncio
import collections

from forkproxy.proxy.http.flow import BODY, Flow

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Budget:
    """Bytes of request bodies held for requests that wait for an instance, across every
    connection, against one bound (the queue's memory, not only its length)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: unbounded
        self.used = 0

    def fits(self, n: int) -> bool:
        return not self.limit or self.used + n <= self.limit


class ChunkQueue:
    __slots__ = ("_chunks", "_flow", "_high", "_waiter", "buffered")

    def __init__(self, flow: Flow, high: int = HIGH_WATER) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._flow = flow
        self._high = high
        self._waiter: asyncio.Future[None] | None = None
        self.buffered = 0

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def push(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self._high:
            self._flow.pause(BODY)
        self.wake()

    def pop(self) -> bytes:
        data = self._chunks.popleft()
        self.buffered -= len(data)
        if self.buffered < LOW_WATER:
            self._flow.resume(BODY)
        return data

    def take_all(self) -> bytes:
        """Everything queued, as one piece: many small reads (a body sent in tiny chunks)
        leave as one write, not one write each."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks.clear()
        self.buffered = 0
        # the read that completed a response may have crossed the high-water mark: a
        # connection left paused would be pooled deaf (issue 10, case 10)
        self._flow.resume(BODY)
        return data

    def discard(self) -> None:
        """Nobody will read what is queued."""
        self._chunks.clear()
        self.buffered = 0

    def wake(self) -> None:
        """Let a waiting reader look again (data, end or error)."""
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        """Until wake() (callers bound it with their own deadline)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
