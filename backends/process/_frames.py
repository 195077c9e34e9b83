"""Frames out of one non-blocking SOCK_SEQPACKET socket, for any number of concurrent
senders. The event loop keeps one writer callback per fd: a sender that registers its own
replaces the one before it, and removing it strands the rest. So the socket has a single
owner of that callback, draining a queue of pending frames in order, and each sender waits
on its own frame's future, bounded by a timeout."""

from __future__ import annotations

import asyncio
import socket
from collections import deque


class ControlTimeout(OSError):
    """The peer did not take the frame within the timeout (it is stuck or flooded)."""


class FrameWriter:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._queue: deque[tuple[bytes, list[int], asyncio.Future[None]]] = deque()
        self._armed = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, data: bytes, fds: list[int], patience: float) -> None:
        """`data` (with `fds`) as one frame; ControlTimeout if it is not sent within
        `patience` seconds, OSError if the socket fails. A frame whose sender gave up
        (timeout, cancellation) is never sent: its fds may be closed the moment after."""
        if self._closed:
            raise OSError("control socket closed")
        if not self._queue:
            try:
                socket.send_fds(self._sock, [data], fds)
                return
            except BlockingIOError:
                pass
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((data, fds, fut))
        self._arm()
        try:
            async with asyncio.timeout(patience):
                await fut  # cancelled with the waiting task: the drain then skips it
        except TimeoutError:
            raise ControlTimeout(
                f"control socket full for {patience:g}s ({len(self._queue)} frames waiting)"
            ) from None

    def _arm(self) -> None:
        if not self._armed:
            asyncio.get_running_loop().add_writer(self._sock.fileno(), self._drain)
            self._armed = True

    def _disarm(self) -> None:
        if self._armed:
            asyncio.get_running_loop().remove_writer(self._sock.fileno())
            self._armed = False

    def _drain(self) -> None:
        while self._queue:
            data, fds, fut = self._queue[0]
            if fut.done():  # its sender gave up
                self._queue.popleft()
                continue
            try:
                socket.send_fds(self._sock, [data], fds)
            except BlockingIOError:
                return  # still armed: called again once there is room
            except OSError as exc:
                self._queue.popleft()
                fut.set_exception(exc)
                continue
            self._queue.popleft()
            fut.set_result(None)
        self._disarm()

    def close(self) -> None:
        """Fail every waiting sender and let go of the fd (before it is closed): the
        writer side here; a reader a pending sock_recv left is the caller's (close_socket)."""
        self._closed = True
        self._disarm()
        while self._queue:
            _data, _fds, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(OSError("control socket closed"))


def close_socket(sock: socket.socket) -> None:
    """Close `sock` and drop any reader a pending loop.sock_recv registered on it first.
    Closed with the reader still registered, the selector keeps the fd's key while epoll
    forgets the fd: the next socket given that fd number (a template's new control socket)
    is never watched (same events: the selector only swaps the callback) and hangs."""
    if sock.fileno() >= 0:
        asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()
