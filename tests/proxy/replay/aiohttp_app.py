"""The replay suite's aiohttp app (aiohttp's own server, fork mode): see marker.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.proxy.replay.marker import DELAY, ID_HEADER, answer


async def handle(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    status, headers, out = answer(
        request.method, request.raw_path, request.headers.get(ID_HEADER, ""), body
    )
    resp = web.StreamResponse(status=status, headers=dict(headers))
    await resp.prepare(request)
    if request.path == "/r/head-late":
        await resp.drain()  # the head goes out now
        await asyncio.sleep(DELAY)
    await resp.write(out)  # aiohttp decides what of it a HEAD / 204 / 304 puts on the wire
    await resp.write_eof()
    return resp


def create_app(*_: Any) -> web.Application:
    """Also `python -m aiohttp.web ... tests.proxy.replay.aiohttp_app:create_app`."""
    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
