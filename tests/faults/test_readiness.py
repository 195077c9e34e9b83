"""Fork instances are ready only once they answer the readiness path, like every other
backend's: a fork stuck in post_fork is a failed start (killed, counted), not a target."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.conftest import ProxyProcess, eventually
from tests.faults.helpers import config, left_behind, metric, pool_name

HANGS = {
    # a post_fork hook that never returns: the fork never serves
    "post_fork": ("", 'post_fork = "tests.faults.apps:hang_forever"\n'),
    # it serves, but its readiness path never answers
    "readiness_path": ('readiness_path = "/slow?s=3600"\n', ""),
}


@pytest.mark.parametrize("where", sorted(HANGS))
async def test_a_fork_that_never_gets_ready_is_a_failed_start_and_is_killed(
    proxy_process: Callable[[str], ProxyProcess], where: str
) -> None:
    pool, backend = HANGS[where]
    p = proxy_process(
        config(
            pool=f'{pool}start_timeout = "1s"\nhold_timeout = "20s"',
            backend=f'{backend}stop_grace = "1s"',
        )
    )
    await p.start()
    pool = pool_name(p)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        t0 = time.monotonic()
        async with s.get(p.url + "/") as r:
            status, body = r.status, await r.text()
        took = time.monotonic() - t0
    assert status in (503, 504), (status, body)
    # start_retries (3) starts of start_timeout (1s) each, their backoff, a shared box
    assert took < 12, took
    starts = await metric(p, "forkproxy_instance_starts_total")
    assert starts.get('forkproxy_instance_starts_total{result="timeout"}', 0) >= 1, starts
    assert starts.get('forkproxy_instance_starts_total{result="ok"}', 0) == 0, starts

    def only_the_template() -> bool:
        return [f.kind for f in left_behind(pool)] == ["template"]

    await eventually(lambda: asyncio.to_thread(only_the_template), 10, "stuck forks killed")
