"""The bundled demo app, served by `forkproxy run` with no config: a small aiohttp app
that exercises a reverse proxy (identity, CPU/IO work, streaming bodies, header echo,
websockets, sudden death). Shipped in the package so a pip-installed forkproxy has an
app to fork; `examples.app` re-exports it for the repository's examples and tests.
`python -m forkproxy.backends.process.demo --port N` (or `python -m examples.app`) serves it."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time

from aiohttp import WSMsgType, web

_CHUNK = 64 * 1024
_MAX_MS = 60_000


def _instance_id() -> str:
    return os.environ.get("FORKPROXY_INSTANCE") or f"pid-{os.getpid()}"


def _ms(request: web.Request) -> int:
    try:
        ms = int(request.query.get("ms", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="ms must be an integer\n") from None
    return max(0, min(ms, _MAX_MS))


def _identity_headers() -> dict[str, str]:
    return {"X-Instance-Id": _instance_id(), "X-Pid": str(os.getpid())}


async def index(request: web.Request) -> web.Response:
    return web.Response(text=f"hello from instance {_instance_id()}\n", headers=_identity_headers())


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def cpu(request: web.Request) -> web.Response:
    ms = _ms(request)
    # A real busy loop (not sleep): it holds the instance's only event loop, like CPU work does.
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return web.Response(text=f"cpu {ms}ms ({n} spins)\n", headers=_identity_headers())


async def io(request: web.Request) -> web.Response:
    ms = _ms(request)
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"io {ms}ms\n", headers=_identity_headers())


async def echo(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers=_identity_headers())
    resp.content_type = request.content_type or "application/octet-stream"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    async for chunk in request.content.iter_chunked(_CHUNK):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def send_bytes(request: web.Request) -> web.StreamResponse:
    try:
        n = int(request.query.get("n", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="n must be an integer\n") from None
    if n < 0:
        raise web.HTTPBadRequest(text="n must not be negative\n")
    resp = web.StreamResponse(headers=_identity_headers())
    resp.content_type = "application/octet-stream"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    block = b"x" * _CHUNK
    left = n
    while left > 0:
        piece = block if left >= _CHUNK else block[:left]
        await resp.write(piece)
        left -= len(piece)
    await resp.write_eof()
    return resp


async def count(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    total = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        digest.update(chunk)
        total += len(chunk)
    return web.json_response(
        {"bytes": total, "sha256": digest.hexdigest()}, headers=_identity_headers()
    )


async def headers(request: web.Request) -> web.Response:
    # getall keeps repeated headers; the raw path shows exactly what the proxy forwarded.
    seen: dict[str, list[str]] = {}
    for key, value in request.headers.items():
        seen.setdefault(key, []).append(value)
    body = {
        "headers": {k: v[0] if len(v) == 1 else v for k, v in seen.items()},
        "path_qs": request.raw_path,
        "method": request.method,
    }
    return web.json_response(body, headers=_identity_headers())


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def crash(request: web.Request) -> web.Response:
    os._exit(1)


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/cpu", cpu)
    app.router.add_get("/io", io)
    app.router.add_get("/slow", io)
    app.router.add_post("/echo", echo)
    app.router.add_get("/bytes", send_bytes)
    app.router.add_post("/count", count)
    app.router.add_route("*", "/headers{tail:.*}", headers)  # any method, any sub-path
    app.router.add_get("/ws", ws)
    app.router.add_get("/crash", crash)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="forkproxy demo app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    import uvloop

    uvloop.install()
    web.run_app(create_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
