"""Fault: the backend says it can start nothing (Backend.down_reason, e.g. every Docker
engine unreachable). Requests get 503 "backend down" at once, no start is tried (each
would fail and grow the start backoff), and once it is back the first request is served
without waiting out a backoff. The backend is a stand-in; its instances are real servers."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from forkproxy.backends.base import Backend, Endpoint, Instance
from forkproxy.backends.errors import StartError
from forkproxy.proxy.config import parse
from forkproxy.proxy.server import Proxy
from tests.conftest import proxy_config


class Switchable(Backend):
    name = "switchable"

    def __init__(self) -> None:
        self.down: str | None = None
        self.starts = 0
        self._runners: list[web.AppRunner] = []

    @property
    def down_reason(self) -> str | None:
        return self.down

    async def start(self, instance_id: str) -> Instance:
        self.starts += 1
        if self.down is not None:
            raise StartError(self.down, reason="engine_unreachable")

        async def hello(_: web.Request) -> web.Response:
            return web.Response(text=instance_id)

        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        port = runner.addresses[0][1]
        return Instance(instance_id, self.name, Endpoint("127.0.0.1", port), ready=True)

    async def stop(self, instance: Instance, reason: str) -> None:
        pass

    async def list(self) -> list[Instance]:
        return []

    async def aclose(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


async def test_backend_down_answers_at_once_and_recovers_without_backoff() -> None:
    backend = Switchable()
    backend.down = "no Docker engine reachable (unix:///x: refused)"
    cfg = parse(proxy_config(pool={"hold_timeout": "10s", "start_retries": 3}))
    proxy = Proxy(cfg, backend=backend)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.listen_port}/"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                t0 = time.monotonic()
                async with s.get(url) as r:
                    assert r.status == 503
                    assert await r.text() == "Service Unavailable: backend down\n"
                    assert r.headers["Retry-After"] == "1"
                assert time.monotonic() - t0 < 0.5
            assert backend.starts == 0  # none tried: each would have failed
            async with s.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r:
                assert 'forkproxy_rejected_total{reason="backend_down"} 5.0' in await r.text()
            backend.down = None
            t0 = time.monotonic()
            async with s.get(url) as r:
                assert r.status == 200, await r.text()
            assert time.monotonic() - t0 < 1.0
    finally:
        await proxy.stop()
