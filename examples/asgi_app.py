"""A framework-free ASGI app (GET / and /healthz) for the fork-mode ASGI path."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    instance = os.environ.get("FORKPROXY_INSTANCE") or f"pid-{os.getpid()}"
    if scope["path"] == "/healthz":
        status, body = 200, b"ok\n"
    elif scope["path"] == "/":
        status, body = 200, f"hello from asgi instance {instance}\n".encode()
    else:
        status, body = 404, b"not found\n"
    # Drain the request body so keep-alive connections stay in sync.
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"x-instance-id", instance.encode()),
                (b"x-pid", str(os.getpid()).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
