"""The admin listener (loopback by default): /metrics, /healthz, /readyz, /instances."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from proxy.server import Proxy


def admin_app(proxy: Proxy) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(proxy.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if proxy.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def instances(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "backend": proxy.cfg.backend_type,
                "pool": proxy.cfg.server.name,
                "owner": proxy.owner_id,
                "queued": proxy.pool.queued,
                "instances": proxy.pool.describe(),
            }
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/instances", instances)
    return app
