"""Two small apps with different answers, served by one proxy in the apps tests."""

from __future__ import annotations

import asyncio

from aiohttp import web


def _answering(text: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        if "sleep" in request.query:  # holds its instance busy this long
            await asyncio.sleep(float(request.query["sleep"]))
        return web.Response(text=f"{text} {request.path}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


def shop() -> web.Application:
    return _answering("shop")


def blog() -> web.Application:
    return _answering("blog")
