"""pool.max_concurrency = "auto" (the default): a backend that knows its app's
concurrency sets it (a WSGI app in fork mode: its threads); otherwise 10."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from forkproxy.backends.support.table import ConfigError
from forkproxy.proxy.config import PoolConfig, parse
from tests.conftest import run_proxy

FLASK = {"type": "process", "mode": "fork", "app": "examples.flask_app:app"}


def test_auto_is_the_default_and_resolves_from_the_hint() -> None:
    pool = parse({}).pool
    # target_concurrency "auto" (None) follows max_concurrency (forkproxy.proxy.policy.target)
    assert pool.concurrency_auto and (pool.max_concurrency, pool.target_concurrency) == (10, None)
    assert pool.with_concurrency_hint(None) == pool
    one = pool.with_concurrency_hint(1)
    assert (one.max_concurrency, one.target_concurrency) == (1, None)
    eight = pool.with_concurrency_hint(8)
    assert (eight.max_concurrency, eight.target_concurrency) == (8, None)


def test_explicit_values_win_over_the_hint() -> None:
    fixed = parse({"pool": {"max_concurrency": 3}}).pool
    assert fixed.with_concurrency_hint(8) == fixed
    # an explicit target is kept, but never above what the app can take
    pool = parse({"pool": {"max_concurrency": "auto", "target_concurrency": 6}}).pool
    assert pool.with_concurrency_hint(8).target_concurrency == 6
    assert pool.with_concurrency_hint(4).target_concurrency == 4
    assert PoolConfig().with_concurrency_hint(4) == PoolConfig()  # built in code: no auto


def test_a_bad_value_names_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"pool": {"max_concurrency": "lots"}})
    assert "pool.max_concurrency: expected an integer or \"auto\", got 'lots'" in str(info.value)


@pytest.mark.parametrize(
    ("backend", "pool", "expected"),
    [
        ({**FLASK, "threads": 3}, {}, (3, None)),  # target "auto": follows max_concurrency
        ({**FLASK, "threads": 3}, {"max_concurrency": 5}, (5, None)),
        ({**FLASK, "threads": 3}, {"target_concurrency": 2}, (3, 2)),
        ({"app": "examples.app:create_app"}, {}, (10, None)),  # aiohttp: the default
    ],
)
async def test_the_running_pool_uses_the_apps_concurrency(
    backend: dict[str, Any], pool: dict[str, Any], expected: tuple[int, int | None]
) -> None:
    async with run_proxy(backend=backend, pool=pool) as proxy:
        cfg = proxy.proxy.pool.cfg
        assert (cfg.max_concurrency, cfg.target_concurrency) == expected


async def test_one_thread_apps_get_an_instance_per_concurrent_request() -> None:
    # The gunicorn -w 1 case, in fork mode: with max_concurrency left at "auto"
    # three concurrent slow requests run side by side on three instances instead of
    # queueing behind each other on one.
    async with run_proxy(backend={**FLASK, "threads": 1}) as proxy:
        assert proxy.proxy.pool.cfg.max_concurrency == 1

        async def one() -> tuple[int, str]:
            async with proxy.session.get(proxy.url + "/delay?ms=700") as resp:
                return resp.status, await resp.text()

        t0 = time.perf_counter()
        answers = await asyncio.gather(one(), one(), one())
        elapsed = time.perf_counter() - t0
    assert [s for s, _ in answers] == [200] * 3
    assert len({body for _, body in answers}) == 3  # "slept 700ms in <instance>"
    assert elapsed < 1.4, f"took {elapsed:.2f}s: serial would be 2.1 s"
