"""Work an ASGI app does after its response (Starlette/FastAPI BackgroundTasks run after
the last body message): the fork says so, so the pool does not take the instance for
idle and stop it mid-job. Only the transitions are reported (none at all for an app
whose calls end with their response), on the template's report socket:
{"working": true|false, "pid": ...}; the template forwards them to the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable, MutableMapping
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
        data = json.dumps({"working": self._pending, "pid": os.getpid()}).encode()
        try:
            self._sock.send(data)
        except BlockingIOError:
            asyncio.get_running_loop().call_later(_RETRY, self._flush)
            return
        except OSError:
            pass  # the template is gone, and with it this fork shortly
        self._pending = None
