"""The instance app of the hardening tests: answers every method and path with what it
received (method, raw target, raw headers in order, body length and digest); GET
/__seen lists every request this instance received (method, target, body length),
/__bytes?n=N streams N bytes."""

from __future__ import annotations

import hashlib

from aiohttp import web

HISTORY: list[tuple[str, str, int]] = []


async def record(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        n += len(chunk)
    seen = {
        "method": request.method,
        "target": request.raw_path,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_len": n,
        "body_sha256": digest.hexdigest(),
    }
    HISTORY.append((request.method, request.raw_path, n))
    return web.json_response(seen)


async def history(request: web.Request) -> web.Response:
    return web.json_response(HISTORY)


async def send_bytes(request: web.Request) -> web.StreamResponse:
    """n zero bytes, streamed (for slow readers)."""
    left = int(request.query.get("n", "0"))
    resp = web.StreamResponse(headers={"Content-Length": str(left)})
    await resp.prepare(request)
    block = bytes(65536)
    while left > 0:
        await resp.write(block[: min(left, len(block))])
        left -= len(block)
    return resp


def create_app() -> web.Application:
    app = web.Application(handler_args={"auto_decompress": False})  # see the bytes as sent
    app.router.add_get("/__seen", history)
    app.router.add_get("/__bytes", send_bytes)
    app.router.add_route("*", "/{tail:.*}", record)
    return app
