"""A request body on disk while it arrives, read back once when the request has a slot
(nginx client_body_temp_path): a client uploading slowly holds a connection and disk, not
an instance. The file is unlinked from the start (O_TMPFILE, or mkstemp then unlink), so
nothing is left behind whatever happens to the proxy. Every disk call runs on a worker
thread: the loop never waits on the disk."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from forkproxy.proxy.http.chunks import Budget

PIECE = 256 * 1024  # bytes read back per read(): one write to the instance each
_T = TypeVar("_T")
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="forkproxy-spool")
    return _pool


def _open(directory: str) -> int:
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):  # no O_TMPFILE (not Linux, or the filesystem)
        fd, path = tempfile.mkstemp(prefix="forkproxy-body-", dir=directory)
        os.unlink(path)
        return fd


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class Spool:
    """Bytes appended while the body arrives, then read back once from the start. Its
    bytes count against `budget` (all connections' spooled bytes) until close()."""

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._dir = tempfile.gettempdir()  # $TMPDIR
        self._fd = -1
        self._closed = False
        self._op: concurrent.futures.Future[Any] | None = None  # the disk call running
        self._opening = False  # that call is the open: its result is the descriptor
        self.size = 0
        self._read = 0

    def fits(self, n: int, limit: int) -> bool:
        """Whether `n` more bytes stay within this body's `limit` and the shared budget."""
        return self.size + n <= limit and self._budget.fits(n)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._closed:
            raise ConnectionResetError("the request is over")
        op = _executor().submit(fn)
        self._op = op
        return await asyncio.wrap_future(op)

    async def append(self, data: bytes) -> None:
        self._budget.used += len(data)
        self.size += len(data)
        if self._fd < 0:
            self._opening = True
            self._fd = await self._run(lambda: _open(self._dir))
            self._opening = False
        fd, at = self._fd, self.size - len(data)
        await self._run(lambda: _write_all(fd, data, at))

    async def read(self) -> bytes:
        """The next piece from the start, b"" once all was read."""
        left = self.size - self._read
        if left <= 0 or self._fd < 0:
            return b""
        fd, at = self._fd, self._read
        data = await self._run(lambda: os.pread(fd, min(PIECE, left), at))
        if not data:
            raise OSError("request body spool file shorter than written")
        self._read += len(data)
        return data

    def close(self) -> None:
        """Give the bytes back to the budget and the file to the system. A disk call still
        running on its thread (its request was cancelled) closes the file when it ends:
        the descriptor is never reused under it."""
        if self._closed:
            return
        self._closed = True
        self._budget.used -= self.size
        self.size = self._read = 0
        fd, self._fd = self._fd, -1
        op = self._op
        if op is not None and not op.done():
            opening = self._opening
            op.add_done_callback(lambda done: _close(_opened(done) if opening else fd))
        else:
            _close(fd)


def _opened(op: concurrent.futures.Future[Any]) -> int:
    return -1 if op.cancelled() or op.exception() is not None else int(op.result())


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)
