"""The replay suite's ASGI app (uvicorn, hypercorn, fork mode): see marker.py. It sends
the body whatever the method or status: what reaches the wire is the server's call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tests.proxy.replay.marker import DELAY, ID_HEADER, answer

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await send({"type": "websocket.close"})  # refused: the server answers 403
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    target = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    headers = dict(scope["headers"])
    rid = headers.get(ID_HEADER.lower().encode(), b"").decode("latin-1")
    status, out_headers, out = answer(scope["method"], target, rid, body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in out_headers],
        }
    )
    if target.startswith("/r/head-late"):
        await asyncio.sleep(DELAY)
    await send({"type": "http.response.body", "body": out})
