"""SIGTERM to a proxy holding hundreds of fork instances: it exits within its grace
periods and leaves no process behind."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.conftest import ProxyProcess, eventually, instances
from tests.faults.helpers import config, left_behind, metric, pool_name

N = 600
STOP_GRACE = 3.0


@pytest.mark.slow
async def test_sigterm_with_600_fork_instances_exits_in_time_and_leaves_nothing(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(
        config(
            pool=f'min_instances = {N}\nmax_instances = {N + 20}\nstart_timeout = "50s"',
            backend=f'stop_grace = "{STOP_GRACE:g}s"',
        )
    )
    await p.start(timeout=40)
    pool = pool_name(p)

    async def all_ready() -> bool:
        return sum(i["state"] == "ready" for i in await instances(p)) >= N

    await eventually(all_ready, 50, f"{N} instances ready")
    assert len(await asyncio.to_thread(left_behind, pool)) > N  # the template too
    async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
        assert r.status == 200
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    # shutdown_timeout is not spent (nothing in flight): stop_grace and a shared box's margin
    assert await p.wait(STOP_GRACE + 20) == 0
    took = time.monotonic() - t0
    left = await asyncio.to_thread(left_behind, pool)
    assert left == [], f"{len(left)} processes left, e.g. {left[:3]}"
    assert took < STOP_GRACE + 20
    print(f"SIGTERM with {N} fork instances: exited in {took:.2f}s")


@pytest.mark.slow
async def test_600_runtime_stops_at_once_all_complete(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    # max_requests_per_instance = 1: one request to each of N ready instances retires
    # them all at once, N stops through the template's control socket while it also
    # starts their replacements (min_instances).
    p = proxy_process(
        config(
            pool=(
                f"min_instances = {N}\nmax_instances = {N + 20}\nmax_concurrency = 1\n"
                'max_requests_per_instance = 1\nstart_timeout = "50s"\nhold_timeout = "50s"'
            ),
            backend=f'stop_grace = "{STOP_GRACE:g}s"',
        )
    )
    await p.start(timeout=40)

    async def all_ready() -> bool:
        return sum(i["state"] == "ready" for i in await instances(p)) >= N

    await eventually(all_ready, 50, f"{N} instances ready")
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def one() -> int:
            async with s.get(p.url + "/") as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(N)))
    assert statuses == [200] * N

    async def retired() -> bool:
        stopped = await metric(p, "forkproxy_instance_stops_total")
        return stopped.get('forkproxy_instance_stops_total{reason="max_requests"}', 0) >= N

    await eventually(retired, STOP_GRACE + 20, f"{N} retired instances stopped")
