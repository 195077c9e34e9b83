"""AfterResponse (pure logic): only calls that outlive their response count, and only the
transitions are reported."""

from __future__ import annotations

import asyncio
from typing import Any

from forkproxy.backends.process._working import NOTICE, AfterResponse


async def test_only_work_after_the_last_body_message_is_reported() -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        if scope["path"] == "/background":
            await gate.wait()

    seen: list[bool] = []
    wrapped = AfterResponse(app)
    wrapped.notify = seen.append

    async def send(_: Any) -> None:
        pass

    async def receive() -> Any:
        return {"type": "http.request"}

    for _ in range(3):
        await wrapped({"type": "http", "path": "/"}, receive, send)
    assert seen == []  # calls that end with their response: nothing to say
    jobs = [
        asyncio.ensure_future(  # noqa: TID251 - awaited below
            wrapped({"type": "http", "path": "/background"}, receive, send)
        )
        for _ in range(2)
    ]
    await asyncio.sleep(NOTICE * 5)
    assert seen == [True] and wrapped.after == 2
    gate.set()
    await asyncio.gather(*jobs)
    assert seen == [True, False] and wrapped.after == 0
