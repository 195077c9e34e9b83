"""Work an app does after its response: an ASGI app's calls still running after the
last body message (Starlette/FastAPI BackgroundTasks), a WSGI response's close() (run
after its body was written: Django's request_finished, Flask's teardown, or an app's
own work). The fork says so, so the pool does not take the instance for idle and stop
it mid-job. Only the transitions are reported (none at all for an app whose calls end
with their response), on the template's report socket:
{"working": true|false, "pid": ...}; the template forwards them to the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_RETRY = 0.05  # the template's socket was full: try again this much later
NOTICE = 0.02  # a call still running this long after its response is working on


class AfterResponse:
    """Wraps the ASGI app: notices HTTP calls still running NOTICE seconds after their
    response ended. A call that returns right after its response (nearly all of them)
    is never reported: no message per request."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.after = 0  # calls past their response, not returned yet
        self.reported = False
        self.notify: Callable[[bool], None] | None = None  # set in the fork
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        responded = False

        async def watched(message: Message) -> None:
            nonlocal responded
            await send(message)
            if (
                not responded
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                responded = True
                self._responded()

        try:
            await self.app(scope, receive, watched)
        finally:
            if responded:
                self._returned()

    def _responded(self) -> None:
        self.after += 1
        if not self.reported and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(NOTICE, self._notice)

    def _returned(self) -> None:
        self.after -= 1
        if self.after:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.reported:
            self.reported = False
            if self.notify is not None:
                self.notify(False)

    def _notice(self) -> None:
        self._timer = None
        if self.after and not self.reported:
            self.reported = True
            if self.notify is not None:
                self.notify(True)


class Reporter:
    """A fork's side of the report socket (non-blocking, shared with its siblings): the
    latest state wins, sent again shortly if the socket is full."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending: bool | None = None

    def __call__(self, working: bool) -> None:
        self._pending = working
        self._flush()

    def _flush(self) -> None:
        if self._pending is None:
            return
        if not send(self._sock, self._pending):
            asyncio.get_running_loop().call_later(_RETRY, self._flush)
            return
        self._pending = None


def send(sock: socket.socket, working: bool) -> bool:
    """One report on the (non-blocking) socket; False if it is full now."""
    data = json.dumps({"working": working, "pid": os.getpid()}).encode()
    try:
        sock.send(data)
    except BlockingIOError:
        return False
    except OSError:
        pass  # the template is gone, and with it this fork shortly
    return True


def send_from_thread(sock: socket.socket, working: bool) -> None:
    """send() from a thread of our own, which may wait for room."""
    while not send(sock, working):
        time.sleep(_RETRY)


class AfterClose:
    """Wraps a WSGI app: notices responses whose close() still runs NOTICE seconds after
    it began. waitress calls close() after writing the body, so a client with a
    Content-Length answer has it all while close() works on. The worker threads only
    note when each close() begins and ends; a watcher thread of the fork's own (started
    by watch(), in the fork: threads do not survive a fork) reports the transitions."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._cond = threading.Condition()
        self._running: dict[int, float] = {}  # id of a close() under way: when it began
        self._reported = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        result = self.app(environ, start_response)
        close = getattr(result, "close", None)
        wrapper = environ.get("wsgi.file_wrapper")
        if close is None or (isinstance(wrapper, type) and isinstance(result, wrapper)):
            return result  # no work after (a file: waitress sends and closes it itself)
        return (_SizedClosing if hasattr(result, "__len__") else _Closing)(result, self)

    def begin(self, key: int) -> None:
        with self._cond:
            self._running[key] = time.monotonic()
            if len(self._running) == 1:
                self._cond.notify()  # the watcher waits for a first one without a timeout

    def end(self, key: int) -> None:
        with self._cond:
            self._running.pop(key, None)
            if self._reported:
                self._cond.notify()

    def watch(self, notify: Callable[[bool], None]) -> None:
        """Run forever in a thread: `notify(True)` once a close() has run NOTICE seconds,
        `notify(False)` once none that long is left."""
        while True:
            with self._cond:
                now = time.monotonic()
                oldest = min(self._running.values(), default=None)
                working = oldest is not None and now - oldest >= NOTICE
                if working == self._reported:
                    # nothing to say: sleep until the oldest one is due, or a change
                    timeout = None if oldest is None or working else oldest + NOTICE - now
                    self._cond.wait(timeout)
                    continue
                self._reported = working
            notify(working)  # outside the lock: the workers never wait on the socket


class _Closing:
    """The app's response iterable, its close() timed for AfterClose."""

    def __init__(self, result: Any, tracker: AfterClose) -> None:
        self._result = result
        self._tracker = tracker

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        key = id(self)
        self._tracker.begin(key)
        try:
            self._result.close()
        finally:
            self._tracker.end(key)


class _SizedClosing(_Closing):
    """Kept sized: waitress sets Content-Length for a one-item iterable by its len()."""

    def __len__(self) -> int:
        return len(self._result)
