"""One proxy, two fork-mode apps: routed by Host and by path prefix, each scaling to
zero on its own, and one machine budget between them."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from forkproxy.proxy.config import parse
from forkproxy.proxy.server import Proxy
from tests.conftest import eventually

APPS = "tests.proxy.apps.two_apps"


def config(idle_ttl: str, template_ttl: str = "auto", **extra: Any) -> dict[str, Any]:
    def app(hosts: list[str], func: str, **more: Any) -> dict[str, Any]:
        backend = {"type": "process", "mode": "fork", "app": f"{APPS}:{func}"}
        return {
            "hosts": hosts,
            "pool": {"idle_ttl": idle_ttl, "start_timeout": "10s", "tick": "50ms"},
            "backend": {**backend, "template_idle_ttl": template_ttl},
            **more,
        }

    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "name": f"apps-{os.getpid()}-{time.monotonic_ns() % 10**9}",
            "shutdown_timeout": "10s",
        },
        "apps": {
            "shop": app(["shop.test"], "shop"),
            "blog": app(["blog.test", "shop.test"], "blog", path_prefix="/blog"),
        },
        **extra,
    }


class Client:
    def __init__(self, proxy: Proxy, session: aiohttp.ClientSession) -> None:
        self.proxy, self.session = proxy, session

    async def get(self, host: str, path: str = "/") -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.proxy.listen_port}{path}"
        async with self.session.get(url, headers={"Host": host}) as r:
            return r.status, await r.text()

    async def admin(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"http://127.0.0.1:{self.proxy.admin_port}{path}") as r:
            return r.status, await (r.json() if "instances" in path else r.text())

    async def instances(self, app: str) -> list[dict[str, Any]]:
        status, body = await self.admin(f"/instances?app={app}")
        assert status == 200
        return list(body["instances"])


@asynccontextmanager
async def running(cfg: dict[str, Any]) -> AsyncIterator[Client]:
    proxy = Proxy(parse(cfg))
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(proxy, session)
    finally:
        await proxy.stop()


async def test_routed_by_host_and_prefix_and_each_scales_to_zero() -> None:
    async with running(config("500ms")) as c:
        assert await c.get("shop.test") == (200, "shop /")
        assert await c.get("SHOP.test:80", "/cart") == (200, "shop /cart")
        assert await c.get("blog.test", "/blog/post") == (200, "blog /blog/post")
        assert await c.get("shop.test", "/blog/x") == (200, "blog /blog/x")  # by prefix
        status, text = await c.get("nowhere.test")
        assert status == 404 and "no app" in text
        assert (await c.get("blog.test", "/"))[0] == 404  # its prefix only

        (shop,) = await c.instances("shop")
        assert shop["app"] == "shop"
        status, body = await c.admin("/instances")
        assert {row["app"] for row in body["instances"]} == {"shop", "blog"}
        assert body["apps"] == ["shop", "blog"]
        assert (await c.admin("/instances?app=nope"))[0] == 404

        _, metrics = await c.admin("/metrics")
        assert 'forkproxy_app_requests_total{app="shop",code="200"} 2.0' in metrics
        assert 'forkproxy_app_requests_total{app="blog",code="200"} 2.0' in metrics
        assert 'forkproxy_app_instances{app="blog",state="ready"} 1.0' in metrics
        assert 'forkproxy_instances{state="ready"} 2.0' in metrics  # the total

        async def both_at_zero() -> bool:
            return not await c.instances("shop") and not await c.instances("blog")

        await eventually(both_at_zero, timeout=20, what="both apps scaled to zero")


async def test_a_full_budget_evicts_the_other_apps_idle_instance() -> None:
    # keep-alive far longer than the test: only the budget takes shop's instance away
    cfg = config("60s", budget={"max_instances": 1})
    async with running(cfg) as c:
        assert await c.get("shop.test") == (200, "shop /")
        assert len(await c.instances("shop")) == 1
        started = time.monotonic()
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
        waited = time.monotonic() - started
        assert not await c.instances("shop")
        assert [i["state"] for i in await c.instances("blog")] == ["ready"]
        _, metrics = await c.admin("/metrics")
        assert 'forkproxy_instance_stops_total{reason="budget"} 1.0' in metrics
        assert waited < 10, waited
        # and back: shop's request evicts blog's idle instance
        assert await c.get("shop.test") == (200, "shop /")
        assert not await c.instances("blog")
        # a reload's new generations start beside the old ones, outside the budget
        assert await c.proxy.reload(parse(cfg))
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")


async def test_a_busy_app_gives_a_starved_app_its_share() -> None:
    # shop takes the whole budget with two busy instances; blog, below its share, has
    # one of them drained for it: it waits for that request, not for shop's load to end
    cfg = config("60s", budget={"max_instances": 2})
    cfg["apps"]["shop"]["pool"]["max_concurrency"] = 1
    async with running(cfg) as c, asyncio.TaskGroup() as tg:
        slow = [tg.create_task(c.get("shop.test", "/?sleep=2")) for _ in range(2)]

        async def two_busy() -> bool:
            rows = await c.instances("shop")
            return len(rows) == 2 and all(r["in_flight"] == 1 for r in rows)

        await eventually(two_busy, timeout=20, what="two busy shop instances")
        started = time.monotonic()
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
        waited = time.monotonic() - started
        assert [await s for s in slow] == [(200, "shop /")] * 2  # the drained one finished
        _, metrics = await c.admin("/metrics")
        assert 'forkproxy_instance_stops_total{reason="budget_share"} 1.0' in metrics
        assert waited < 15, waited


async def test_reload_rebuilds_only_the_apps_that_changed() -> None:
    def cfg() -> dict[str, Any]:
        out = config("60s")
        out["server"]["name"] = f"reload-{os.getpid()}"
        # exec mode: a pool setting applies in place (fork mode reimports on every reload)
        out["apps"]["shop"]["backend"] = {"type": "process", "mode": "exec"}
        return out

    async with running(cfg()) as c:
        assert (await c.get("shop.test"))[0] == 200
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
        shop, blog = c.proxy.gens["shop"], c.proxy.gens["blog"]
        ids = [i["id"] for i in await c.instances("shop")]
        new = cfg()
        new["apps"]["shop"]["pool"]["max_concurrency"] = 3  # in place
        new["apps"]["blog"]["backend"]["app"] = f"{APPS}:shop"  # a new generation
        new["apps"]["news"] = {
            "hosts": ["news.test"],
            "backend": {"type": "process", "mode": "fork", "app": f"{APPS}:blog"},
        }
        assert await c.proxy.reload(parse(new))
        assert c.proxy.gens["shop"] is shop and shop.pool.cfg.max_concurrency == 3
        assert c.proxy.gens["blog"] is not blog and c.proxy.gens["blog"].number == 2
        assert [i["id"] for i in await c.instances("shop")] == ids
        assert await c.get("blog.test", "/blog/") == (200, "shop /blog/")
        assert await c.get("news.test", "/") == (200, "blog /")
        # an app removed: its host is nobody's now
        del new["apps"]["news"]
        assert await c.proxy.reload(parse(new))
        assert (await c.get("news.test", "/"))[0] == 404
        # one app that cannot start: nothing is replaced
        new["apps"]["shop"]["backend"]["app"] = "no.such.module:app"
        new["apps"]["shop"]["backend"]["mode"] = "fork"
        new["apps"]["blog"]["backend"]["app"] = f"{APPS}:blog"
        before = dict(c.proxy.gens)
        assert not await c.proxy.reload(parse(new))
        assert c.proxy.gens == before
        assert await c.get("blog.test", "/blog/") == (200, "shop /blog/")


async def test_a_request_body_to_no_app_keeps_the_connection_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config("60s")
    cfg["server"]["access_log"] = True  # the logged handler routes as well
    caplog.set_level(logging.INFO, "forkproxy.access")
    async with running(cfg) as c:
        url = f"http://127.0.0.1:{c.proxy.listen_port}/"
        for _ in range(3):  # one pooled connection, reused
            async with c.session.post(url, data=b"x" * 5000, headers={"Host": "no.test"}) as r:
                assert r.status == 404
        assert await c.get("shop.test") == (200, "shop /")
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
    logged = [r.getMessage() for r in caplog.records if r.name == "forkproxy.access"]
    assert sum('"POST / HTTP/1.1" 404' in line for line in logged) == 3
    assert any('"GET /blog/ HTTP/1.1" 200' in line for line in logged)
