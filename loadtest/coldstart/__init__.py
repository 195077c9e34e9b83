"""Per-backend cold-start benchmarks (process, docker, vsphere, swarm) and what their series
share: the row every series reports, a TTFB series through a proxy, the wait for a first 200,
a series straight against a backend, rows from series through forkproxy. The contract each
backend's bench follows, and the one command line that runs any of them, are in contract.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from forkproxy.loadtest.report.stats import percentile

if TYPE_CHECKING:
    from forkproxy.loadtest.coldstart.contract import Result

K = TypeVar("K")

# The row every cold-start series reports (extra keys stay in results.json).
ROW_KEYS = ("path", "n", "failures", "distinct_instances", "p50_ms", "p99_ms", "min_ms", "max_ms")


def start_row(path: str, ttfb: list[float], failures: int, distinct: int) -> dict[str, Any]:
    """One cold-start row from time-to-first-byte samples in seconds."""
    return {
        "path": path,
        "n": len(ttfb),
        "failures": failures,
        "distinct_instances": distinct,
        "p50_ms": percentile(ttfb, 50) * 1000,
        "p99_ms": percentile(ttfb, 99) * 1000,
        "min_ms": min(ttfb, default=math.nan) * 1000,
        "max_ms": max(ttfb, default=math.nan) * 1000,
    }


def fresh_connections(timeout: float) -> aiohttp.ClientSession:
    """A client that opens a new connection for every request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def ttfb_series(
    url: str, n: int, pause: float, before: Callable[[], Awaitable[None]] | None = None
) -> tuple[list[float], set[str], int]:
    """n sequential requests on fresh connections: TTFB seconds, instance ids seen, failures.
    `before` runs ahead of each request (e.g. wait until a paused spare is parked)."""
    ttfb: list[float] = []
    ids: set[str] = set()
    failures = 0
    for _ in range(n):
        if before is not None:
            await before()
        # A new connection each time: a cold client meeting a cold proxy path.
        async with fresh_connections(60) as s:
            t0 = time.perf_counter()
            try:
                async with s.get(url) as resp:
                    t1 = time.perf_counter()  # headers are in: the first byte arrived
                    await resp.read()
                    if resp.status != 200:
                        failures += 1
                        continue
                    ttfb.append(t1 - t0)
                    ids.add(resp.headers.get("X-Instance-Id", ""))
            except (aiohttp.ClientError, OSError, TimeoutError):
                failures += 1
        await asyncio.sleep(pause)  # let the retired instance stop: measure starts, not reaping
    return ttfb, ids, failures


async def until_200(session: aiohttp.ClientSession, url: str, deadline: float, poll: float) -> None:
    """GET until a 200 (a cold instance may refuse or fail at first); TimeoutError after
    `deadline` (time.monotonic()). `poll` sets the resolution of the measured readiness."""
    while True:
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200")
        await asyncio.sleep(poll)


async def start_series(backend: Any, n: int, paused: bool) -> list[float]:
    """start() -> first byte of GET /, straight against a backend (no proxy), n times; each
    instance is stopped before the next. The backend is prepared first and closed after.
    `paused`: every sample must take a spare from the backend's paused pool (its `spares`),
    waited for untimed."""
    await backend.prepare()
    try:
        return await _start_series(backend, n, paused)
    finally:
        await backend.aclose()


async def _start_series(backend: Any, n: int, paused: bool) -> list[float]:
    ttfb: list[float] = []
    async with fresh_connections(5) as s:
        for i in range(n):
            deadline = time.monotonic() + 60
            while paused and not backend.spares:  # untimed: let the refill land
                if time.monotonic() > deadline:
                    raise TimeoutError("the paused pool did not refill within 60 s")
                await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            inst = await backend.start(f"b{i}")
            if paused and inst.meta.get("from") != "paused_pool":
                raise RuntimeError("a paused sample was served by a cold start")
            await until_200(s, inst.endpoint.url + "/", time.monotonic() + 60, 0.005)
            ttfb.append(time.perf_counter() - t0)
            await backend.stop(inst, "bench")
    return ttfb


async def add_proxied(
    result: Result,
    backend: str,
    labels: Mapping[K, str],
    series: Callable[[K], Awaitable[tuple[list[float], int, str]]],
) -> None:
    """series(key) through forkproxy (TTFB seconds, failures, command) for each key of
    `labels`, a row of `result` each; a proxy that fails to run skips the rest, saying why."""
    try:
        for key, label in labels.items():
            ttfb, failures, command = await series(key)
            path = f"client -> forkproxy -> {backend} {label}"
            result.rows.append(start_row(path, ttfb, failures, len(ttfb)))
            result.commands.append(command)
    except (RuntimeError, TimeoutError, OSError) as exc:
        result.skipped.append((f"through forkproxy, {backend}", str(exc).splitlines()[0]))
