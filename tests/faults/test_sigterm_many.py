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
from tests.faults.helpers import config, left_behind, pool_name

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
