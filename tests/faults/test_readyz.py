"""/readyz answers 503 whenever the pool cannot serve now (nothing ready, starts failing),
with the reason; a healthy pool scaled to zero is ready (it can start one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import ProxyProcess, eventually, get, instances
from tests.faults.helpers import config


async def _readyz(p: ProxyProcess) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/readyz") as r:
        return r.status, await r.text()


async def test_readyz_is_503_with_a_reason_while_the_app_crash_loops(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(config(backend='post_fork = "tests.faults.apps:crash"'))
    await p.start()  # nothing tried yet: ready
    status, _ = await get(p.url + "/")
    assert status == 503
    status, body = await _readyz(p)
    assert status == 503, body
    assert "no instance could be started" in body and "died" in body, body
    await asyncio.sleep(1.0)  # no traffic: it stays 503 (recovery starts keep failing)
    assert (await _readyz(p))[0] == 503


async def test_readyz_is_503_while_forks_never_become_ready(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(
        config(
            pool='start_timeout = "2s"\nhold_timeout = "20s"',
            backend='post_fork = "tests.faults.apps:hang_forever"\nstop_grace = "1s"',
        )
    )
    await p.start()
    status, _ = await get(p.url + "/", timeout=30)
    assert status in (503, 504)

    async def not_ready() -> bool:
        status, body = await _readyz(p)
        return status == 503 and "timeout" in body

    await eventually(not_ready, 10, "/readyz 503 naming the timeout")


async def test_readyz_stays_200_for_a_healthy_pool_scaled_to_zero(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(config(pool='idle_ttl = "200ms"\ntick = "50ms"'))
    await p.start()
    assert await get(p.url + "/") == (200, "ok")

    async def scaled_to_zero() -> bool:
        return await instances(p) == []

    await eventually(scaled_to_zero, 10, "the idle instance to stop")
    assert (await _readyz(p))[0] == 200


async def test_readyz_comes_back_without_traffic_once_starts_work_again(
    proxy_process: Callable[[str], ProxyProcess], tmp_path: Path
) -> None:
    # A load balancer sends a pool whose /readyz is 503 nothing: the pool must try again
    # on its own, or it would stay unready after the cause is gone.
    marker = tmp_path / "down"
    marker.write_text("")
    p = proxy_process(
        config(
            backend=(
                'post_fork = "tests.faults.apps:crash_while_marked"\n'
                f'env = {{ FAULTS_MARKER = "{marker}" }}'
            )
        )
    )
    await p.start()
    assert (await get(p.url + "/"))[0] == 503
    assert (await _readyz(p))[0] == 503
    marker.unlink()

    async def ready() -> bool:
        return (await _readyz(p))[0] == 200

    await eventually(ready, 15, "/readyz 200 again with no request sent")
