"""budget.max_memory over measured memory, and every app's memory and per-pool gauges
under its own label: one real proxy, two fork-mode apps, over loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from typing import Any

from forkproxy.backends.base import Endpoint, Instance
from forkproxy.proxy.budget import BudgetConfig
from forkproxy.proxy.templates_memory import Templates
from tests.conftest import eventually
from tests.proxy.apps.test_apps_e2e import Client, config, running

TIB = 1000 * 1024**3


def gauge(metrics: str, name: str, app: str | None = None) -> float | None:
    label = f'{{app="{app}"}}' if app else '{resource="memory"}'
    m = re.search(rf"^{name}{re.escape(label)} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else None


async def metrics(c: Client) -> str:
    status, text = await c.admin("/metrics")
    assert status == 200
    return str(text)


async def live_sample(c: Client, fresh: int = 2) -> dict[str, Any]:
    """The `fresh`th sample the live page's event stream sends (the first may be a
    second old)."""
    url = f"http://127.0.0.1:{c.proxy.admin_port}/events"
    async with c.session.get(url) as r:
        event = ""
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "sample":
                fresh -= 1
                if not fresh:
                    return dict(json.loads(line[6:]))
    raise AssertionError("no sample")


# The templates are held 60 s in these tests: they measure them, and the auto template
# keep-alive (5 s for an app with no learned gaps) could give one back mid-test.


async def test_templates_and_instances_measured_per_app_and_the_budget_shown() -> None:
    async with running(config("60s", "60s", budget={"max_memory": "1000g"})) as c:
        # blog never started an instance: its template is measured all the same
        async def templates_measured() -> bool:
            text = await metrics(c)
            return all(
                (gauge(text, "forkproxy_app_templates_memory_bytes", app) or 0) > 1024**2
                for app in ("shop", "blog")
            )

        await eventually(templates_measured, timeout=20, what="both templates measured")
        assert await c.get("shop.test") == (200, "shop /")
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")

        async def instances_measured() -> bool:
            text = await metrics(c)
            return all(
                (gauge(text, "forkproxy_app_instances_memory_bytes", app) or 0) > 0
                for app in ("shop", "blog")
            )

        await eventually(instances_measured, timeout=20, what="both apps' instances measured")
        text = await metrics(c)
        for app in ("shop", "blog"):  # each app's pool under its own label
            assert (gauge(text, "forkproxy_app_start_cost_seconds", app) or 0) > 0, app
            assert gauge(text, "forkproxy_app_keep_alive_seconds", app) is not None, app
        assert gauge(text, "forkproxy_budget_limit") == TIB
        assert (gauge(text, "forkproxy_budget_used") or 0) > 2 * 1024**2

        sample = await live_sample(c)
        rows = {row["app"]: row for row in sample["apps"]}
        assert set(rows) == {"shop", "blog"}
        for row in rows.values():
            assert row["idle"] == 1 and row["busy"] == 0 and row["queued"] == 0
            assert row["memory"] > 0 and row["template_memory"] > 0
            assert row["template"] == "up"
        budget = sample["budget"]
        assert budget["max_memory"] == TIB and budget["instances"] == 2
        assert budget["memory"] >= sum(r["memory"] + r["template_memory"] for r in rows.values())


async def test_a_start_over_max_memory_gives_back_the_other_apps_idle_instance() -> None:
    # keep-alive far longer than the test: only the budget takes shop's instance away
    async with running(config("60s", "60s", budget={"max_memory": "1000g"})) as c:
        assert await c.get("shop.test") == (200, "shop /")
        machine = c.proxy.machine

        def measured() -> bool:
            usage = machine.usage()
            shop, blog = c.proxy.gens["shop"].pool, c.proxy.gens["blog"].pool
            return bool(
                usage["memory"]
                and shop.memory_held()[0]
                and shop.templates.bytes
                and blog.templates.bytes
            )

        await eventually(measured, timeout=20, what="instance and templates measured")
        used = machine.usage()["memory"]
        shop_instance = c.proxy.gens["shop"].pool.memory_held()[0]
        assert used and shop_instance
        # blog's first instance (priced at shop's) does not fit beside shop's
        machine.cfg = dataclasses.replace(machine.cfg, max_memory=used + shop_instance // 2)
        assert isinstance(machine.cfg, BudgetConfig)
        started = time.monotonic()
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
        waited = time.monotonic() - started
        assert not await c.instances("shop")
        assert [i["state"] for i in await c.instances("blog")] == ["ready"]
        text = await metrics(c)
        assert 'forkproxy_instance_stops_total{reason="budget"} 1.0' in text
        assert waited < 10, waited


def test_a_replicas_templates_are_not_counted() -> None:
    def listed(owner: str, pid: int) -> Instance:
        meta = {"kind": "template", "pid": str(pid)}
        return Instance(
            f"tpl-{pid}", "process", Endpoint("127.0.0.1", 0), owner_id=owner, meta=meta
        )

    t = Templates()
    t.learn([listed("other-replica", 10**7)], "me")
    assert not t.known and t.state == ""
    t.learn([listed("me", 10**7 + 1)], "me")
    assert t.known and t.reported


async def test_a_start_waits_while_busy_instances_hold_the_memory() -> None:
    async with running(config("60s", "60s", budget={"max_memory": "1000g"})) as c:
        assert await c.get("shop.test") == (200, "shop /")
        machine = c.proxy.machine
        shop, blog = c.proxy.gens["shop"].pool, c.proxy.gens["blog"].pool

        def measured() -> bool:
            return bool(shop.memory_held()[0] and shop.templates.bytes and blog.templates.bytes)

        await eventually(measured, timeout=20, what="instance and templates measured")
        async with asyncio.TaskGroup() as tg:
            slow = tg.create_task(c.get("shop.test", "/?sleep=4"))

            async def busy() -> bool:
                return [i["in_flight"] for i in await c.instances("shop")] == [1]

            await eventually(busy, timeout=20, what="shop's instance busy")
            used, inst = machine.usage()["memory"], shop.memory_held()[0]
            assert used and inst
            machine.cfg = dataclasses.replace(machine.cfg, max_memory=used + inst // 2)
            started = time.monotonic()
            # no idle capacity to give back: blog waits for shop's request, not 503
            assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")
            waited = time.monotonic() - started
            assert slow.done()  # it waited for the busy instance's request to end
            assert await slow == (200, "shop /")
        assert waited < 20, waited
        text = await metrics(c)
        stops = re.findall(
            r'^forkproxy_instance_stops_total\{reason="(budget\w*)"\} 1.0$', text, re.M
        )
        assert len(stops) == 1, text
