"""The replica scenario every backend passes: two `forkproxy run` subprocesses with the
same pool name serve side by side; neither loses an instance or an in-flight request when
the other starts, restarts or stops; after one is SIGKILLed, whatever it left is gone
within pool.orphan_timeout while the survivor's own instances stay."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from forkproxy.backends.base import Backend
from forkproxy.backends.support.owner import Owner, this_space
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.orphans import OrphanReaper
from tests.conftest import ProxyProcess, eventually

# What the killed owner still has where its backend lives (processes, containers, VMs).
LeftOf = Callable[[str], Awaitable[int]]


async def instances(p: ProxyProcess) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/instances") as r:
        data = await r.json()
    return list(data["instances"])


async def owner_of(p: ProxyProcess) -> str:
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/instances") as r:
        return str((await r.json())["owner"])


async def ready_ids(p: ProxyProcess) -> set[str]:
    return {i["id"] for i in await instances(p) if i["state"] == "ready"}


async def get(url: str, timeout: float = 60) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.get(url) as r,
    ):
        await r.read()
        return r.status


async def _warm(p: ProxyProcess) -> set[str]:
    assert await get(p.url + "/") == 200
    await eventually(lambda: _has_ready(p), 30, "a ready instance")
    ids = await ready_ids(p)
    for inst in await instances(p):
        assert inst["owner"] == await owner_of(p)  # /instances shows the owner
    return ids


async def _has_ready(p: ProxyProcess) -> bool:
    return bool(await ready_ids(p))


class _Slow:
    """A slow request in flight on `p` while something happens to the other replica."""

    def __init__(self, p: ProxyProcess, path: str) -> None:
        self.p = p
        self.path = path
        self.task: asyncio.Future[int] | None = None

    async def __aenter__(self) -> _Slow:
        self.task = asyncio.ensure_future(get(self.p.url + self.path))  # noqa: TID251
        await asyncio.sleep(0.5)  # it reaches an instance
        assert not self.task.done(), "the slow request ended too early"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        assert await self.task == 200, f"in-flight request on {self.p.url} failed"


async def _kept(p: ProxyProcess, before: set[str]) -> None:
    now = await ready_ids(p)
    assert before <= now, f"{p.url} lost instances {before - now}:\n{p.log.read_text()}"


async def run_scenario(
    new: Callable[[str], ProxyProcess],
    config_text: str,
    slow_path: str,
    left_of: LeftOf,
    bound: float,
    start_timeout: float = 30.0,
) -> ProxyProcess:
    """Returns the survivor (stopped by then: every proxy gets SIGTERM at the end)."""
    made: list[ProxyProcess] = []

    def make() -> ProxyProcess:
        made.append(new(config_text))
        return made[-1]

    try:
        return await _scenario(make, slow_path, left_of, bound, start_timeout)
    finally:
        for p in made:
            if p.proc is not None and p.proc.poll() is None:
                p.signal(signal.SIGTERM)
                await p.wait(60)


async def _scenario(
    make: Callable[[], ProxyProcess],
    slow_path: str,
    left_of: LeftOf,
    bound: float,
    start_timeout: float,
) -> ProxyProcess:
    a = make()
    await a.start(start_timeout)
    a_ids = await _warm(a)

    b = make()
    async with _Slow(a, slow_path):  # B starts (and sweeps the pool) while A serves
        await b.start(start_timeout)
        b_ids = await _warm(b)
    await _kept(a, a_ids)

    async with _Slow(a, slow_path):  # B restarts
        b.signal(signal.SIGTERM)
        assert await b.wait(60) == 0
        await b.start(start_timeout)
        b_ids = await _warm(b)
    await _kept(a, a_ids)

    async with _Slow(b, slow_path):  # A stops and starts again
        a.signal(signal.SIGTERM)
        assert await a.wait(60) == 0
        await a.start(start_timeout)
        a_ids = await _warm(a)
    await _kept(b, b_ids)

    b_owner = await owner_of(b)
    assert await left_of(b_owner) > 0
    b.kill()  # SIGKILL: B cleans up nothing
    t0 = time.monotonic()

    async def b_gone() -> bool:
        return await left_of(b_owner) == 0

    await eventually(b_gone, bound + 5, f"what {b_owner} left to be reaped")
    took = time.monotonic() - t0
    print(f"what {b_owner} left was gone {took:.1f}s after its SIGKILL (bound {bound}s)")
    assert took <= bound + 5
    await _kept(a, a_ids)
    assert await get(a.url + "/") == 200
    return a


def dead_owner(tag: str) -> str:
    """An owner id on this host whose process has exited: provably stopped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return str(Owner(f"dead-{tag}", this_space(), proc.pid, 1))


def remote_owner(tag: str) -> str:
    """An owner id from another host: /proc cannot judge it, only its lease can."""
    return str(Owner(f"remote-{tag}", "otherhost", 1, 1))


async def lease_decides(
    survivor: Backend, survivor_owner: str, remote: Backend, remote_instance: str, within: float
) -> float:
    """`remote` (an owner on another host) heartbeats while the survivor's reaper sweeps
    for twice the grace: its instance stays. It stops beating: the instance is reaped
    within `within`, not before the grace. Returns the seconds that took."""
    metrics = Metrics()
    reaper = OrphanReaper(survivor, survivor_owner, metrics, within, time.monotonic)
    grace = reaper.judge.grace

    async def listed() -> bool:
        return remote_instance in {i.id for i in await survivor.list()}

    end = time.monotonic() + 2 * grace
    while time.monotonic() < end:
        await remote.heartbeat()
        await reaper.sweep()
        assert await listed(), "an instance of a live (heartbeating) owner was reaped"
        await asyncio.sleep(reaper.interval)
    stopped = time.monotonic()  # the remote owner "dies": no more heartbeats
    while await listed():
        assert time.monotonic() - stopped < within + 2, "not reaped within orphan_timeout"
        await reaper.sweep()
        await asyncio.sleep(reaper.interval)
    took = time.monotonic() - stopped
    assert took >= grace - reaper.interval, f"reaped {took:.1f}s after the last beat"
    orphan = metrics.registry.get_sample_value(
        "forkproxy_instance_stops_total", {"reason": "orphan"}
    )
    assert orphan == 1
    return took
