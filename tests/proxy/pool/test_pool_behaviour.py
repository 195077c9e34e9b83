"""The pool through real sockets and the real process backend: cold start and reuse,
queueing, 503/504, failing apps, deaths, reaping, per-request instances."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import pytest

from forkproxy.backends.support.gaps import GAP_MIN_SAMPLES
from tests.conftest import Running, eventually, run_proxy


async def test_cold_start_then_reuse() -> None:
    async with run_proxy() as p:
        assert await p.instances() == []  # nothing runs before the first request
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
            first = r.headers["X-Instance-Id"]
            assert "cold;dur=" in r.headers["Server-Timing"]
            assert 'desc="first request of a fresh instance"' in r.headers["Server-Timing"]
            assert (await r.text()).startswith("hello from instance")
        for _ in range(3):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 200
                assert r.headers["X-Instance-Id"] == first
                assert "cold" not in r.headers["Server-Timing"]
                assert "first request" not in r.headers["Server-Timing"]
        assert len(await p.instances()) == 1


async def test_concurrency_above_max_queues_then_drains() -> None:
    async with run_proxy(pool={"max_concurrency": 2, "max_instances": 1}) as p:

        async def one() -> int:
            async with p.session.get(p.url + "/io?ms=150") as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(8)))
        assert statuses == [200] * 8
        insts = await p.instances()
        assert len(insts) == 1 and insts[0]["requests_served"] == 8


async def test_queue_full_gives_503_with_retry_after() -> None:
    pool = {"max_concurrency": 1, "max_instances": 1, "max_queue": 1}
    async with run_proxy(pool=pool) as p:
        async with p.session.get(p.url + "/") as r:  # warm the single instance
            assert r.status == 200

        async def one() -> tuple[int, str | None]:
            async with p.session.get(p.url + "/io?ms=400") as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        results = await asyncio.gather(*(one() for _ in range(4)))
        assert sorted(s for s, _ in results) == [200, 200, 503, 503]
        assert all(ra == "1" for s, ra in results if s == 503)


async def test_hold_timeout_gives_504() -> None:
    pool = {"max_concurrency": 1, "max_instances": 1, "hold_timeout": "200ms"}
    async with run_proxy(pool=pool) as p:
        slow = asyncio.ensure_future(p.session.get(p.url + "/io?ms=1500"))  # noqa: TID251
        await eventually(
            lambda: p.proxy.pool.describe() != [] and p.proxy.pool.describe()[0]["in_flight"] == 1
        )
        async with p.session.get(p.url + "/") as r:
            assert r.status == 504
            assert "Gateway Timeout" in await r.text()
        async with await slow as r:
            assert r.status == 200


async def test_app_that_never_becomes_ready_gives_503_not_a_hang() -> None:
    never = [sys.executable, "-c", "import time,sys; time.sleep(60)", "{port}"]
    async with run_proxy(
        pool={"start_timeout": "300ms", "start_retries": 2, "hold_timeout": "20s"},
        backend={"mode": "exec", "command": never},
    ) as p:
        async with asyncio.timeout(10):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 503
                assert "no instance could be started" in await r.text()
        assert await p.instances() == []


async def test_app_that_crashes_at_start_gives_503() -> None:
    crash = [sys.executable, "-c", "import sys; sys.exit(3)", "{port}"]
    async with run_proxy(
        pool={"start_retries": 2}, backend={"mode": "exec", "command": crash}
    ) as p:
        async with asyncio.timeout(10):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 503


async def test_instance_killed_mid_request_gives_502_and_pool_recovers() -> None:
    async with run_proxy() as p:
        async with p.session.get(p.url + "/") as r:
            first = r.headers["X-Instance-Id"]
        async with p.session.get(p.url + "/crash") as r:
            assert r.status == 502
        await eventually(lambda: all(i["id"] != first for i in p.proxy.pool.describe()))
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
            assert r.headers["X-Instance-Id"] != first


async def test_idle_instances_are_reaped_after_ttl() -> None:
    async with run_proxy(pool={"idle_ttl": "300ms"}) as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        assert len(await p.instances()) == 1

        async def gone() -> bool:
            return await p.instances() == []

        await eventually(gone, 5, "idle instance to be reaped")
        text = await (await p.session.get(p.admin + "/metrics")).text()
        assert 'forkproxy_instance_stops_total{reason="idle"} 1.0' in text


async def test_an_app_called_steadily_keeps_its_instance_through_its_learned_gaps() -> None:
    # A fork's own keep-alive (20 starts: well under a second) would reap the instance in
    # every 1.2 s pause; after GAP_MIN_SAMPLES pauses the pool has learned them and holds
    # the app's last instance through the next ones (2 x their 99th percentile).
    async with run_proxy(pool={"idle_ttl": "auto"}) as p:
        served: list[tuple[str, bool]] = []
        for _ in range(GAP_MIN_SAMPLES + 3):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 200
                served.append((r.headers["X-Instance-Id"], "cold" in r.headers["Server-Timing"]))
            await asyncio.sleep(1.2)
        held = served[GAP_MIN_SAMPLES:]
        assert len({i for i, _ in held}) == 1 and not any(c for _, c in held[1:]), served
        text = await (await p.session.get(p.admin + "/metrics")).text()
        window = [ln for ln in text.splitlines() if ln.startswith("forkproxy_gap_window_seconds ")]
        assert window and 2.0 < float(window[0].split()[1]) < 5.0, window
        settings = p.proxy.pool.effective_settings()  # what the live page shows
        assert "last instance held" in settings["learned_gap_window"], settings


async def test_a_reloads_new_generation_keeps_the_learned_gaps() -> None:
    async with run_proxy() as p:
        for _ in range(GAP_MIN_SAMPLES + 1):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 200
            await asyncio.sleep(0.02)
        old = p.proxy.gen
        assert len(old.ctx.gaps) >= GAP_MIN_SAMPLES
        assert await p.proxy.reload(p.proxy.cfg)  # fork mode: a new generation
        new = p.proxy.gen
        assert new is not old and len(new.ctx.gaps) == len(old.ctx.gaps)


async def test_fresh_instance_per_request() -> None:
    async with run_proxy(pool={"max_requests_per_instance": 1}) as p:
        seen = set()
        for _ in range(4):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 200
                seen.add(r.headers["X-Instance-Id"])
        assert len(seen) == 4

        async def drained() -> bool:
            return await p.instances() == []

        await eventually(drained, 5, "per-request instances to stop")


async def test_warm_pool_keeps_an_idle_spare_ready() -> None:
    async with run_proxy(pool={"warm_pool": 1, "idle_ttl": "100ms"}) as p:

        async def states() -> list[str]:
            return sorted(i["state"] for i in await p.instances())

        async def one_spare() -> bool:
            return await states() == ["ready"]

        await eventually(one_spare, 10, "a warm spare before any request")
        await asyncio.sleep(0.4)  # past idle_ttl: the spare is kept
        assert await states() == ["ready"]

        async def busy() -> str:
            async with p.session.get(p.url + "/io?ms=1500") as r:
                await r.read()
                return r.headers["Server-Timing"]

        async def two() -> bool:
            return len(await p.instances()) == 2

        # looked for while the request is in flight: once it ends, the load needs one
        # instance again and the extra spare may go after idle_ttl (100 ms)
        async with asyncio.TaskGroup() as tg:
            request = tg.create_task(busy())
            await eventually(two, 10, "a new spare while the first one is busy")
        assert "cold" not in request.result()  # served by the spare


async def test_min_instances_are_kept_past_idle_ttl() -> None:
    async with run_proxy(pool={"min_instances": 2, "idle_ttl": "100ms"}) as p:

        async def two_ready() -> bool:
            return [i["state"] for i in await p.instances()] == ["ready", "ready"]

        await eventually(two_ready, 10, "min_instances")
        await asyncio.sleep(0.4)
        assert len(await p.instances()) == 2


async def test_admin_endpoints() -> None:
    async with run_proxy() as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        async with p.session.get(p.admin + "/healthz") as r:
            assert r.status == 200
        async with p.session.get(p.admin + "/readyz") as r:
            assert r.status == 200
        (inst,) = await p.instances()
        assert inst["backend"] == "process" and inst["state"] == "ready"
        assert inst["endpoint"].startswith("http://127.0.0.1:")
        assert inst["requests_served"] == 1 and inst["in_flight"] == 0
        text = await (await p.session.get(p.admin + "/metrics")).text()
        for name in (
            'forkproxy_requests_total{code="200"} 1.0',
            'forkproxy_instance_starts_total{result="ok"} 1.0',
            'forkproxy_instances{state="ready"} 1.0',
            "forkproxy_request_duration_seconds_bucket",
            "forkproxy_queue_wait_seconds",
            "forkproxy_instance_start_seconds",
        ):
            assert name in text, name


async def test_many_concurrent_requests_start_a_bounded_number_of_instances() -> None:
    pool = {"max_concurrency": 10, "max_starting": 4, "max_instances": 40}
    async with run_proxy(pool=pool) as p:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:

            async def one() -> int:
                async with s.get(p.url + "/io?ms=50") as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(100)))
        assert statuses == [200] * 100
        text = await (await p.session.get(p.admin + "/metrics")).text()
        line = next(x for x in text.splitlines() if x.startswith("forkproxy_instance_starts_total"))
        started = float(line.split()[-1])
        assert 1 <= started <= 100 / 10 + 4


async def test_access_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.access")
    async with (
        run_proxy(server={"access_log": True}) as p,
        p.session.get(p.url + "/io?ms=1") as r,
    ):
        assert r.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "forkproxy.access"]
    assert len(lines) == 1
    assert lines[0].startswith('127.0.0.1 "GET /io?ms=1 HTTP/1.1" 200 ')


async def test_pack_routing_fills_one_instance_so_the_other_can_age_out() -> None:
    for routing, want_distinct in (("least_loaded", 2), ("pack", 1)):
        pool = {"min_instances": 2, "routing": routing, "target_concurrency": 5}
        async with run_proxy(pool=pool) as p:

            async def two_ready(p: Running = p) -> bool:
                return len([i for i in await p.instances() if i["state"] == "ready"]) == 2

            await eventually(two_ready, 10, "two instances")

            async def one(p: Running = p) -> str:
                async with p.session.get(p.url + "/io?ms=300") as r:
                    await r.read()
                    return r.headers["X-Instance-Id"]

            ids = await asyncio.gather(*(one() for _ in range(4)))
            assert len(set(ids)) == want_distinct, (routing, ids)
