"""Two `forkproxy run` replicas serving the same two fork-mode apps (same server.name,
so the same pool names): one replica's startup orphan scan, its graceful shutdown and
the reaping of what a SIGKILLed one left never touch the other's templates or forks."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from forkproxy.backends.process import _procfs, leftovers
from tests.conftest import ProxyProcess, eventually
from tests.replicas import _Slow, get, instances

APPS = "tests.proxy.apps.two_apps"
CONFIG = """
[server]
name = "{name}"
shutdown_timeout = "20s"
[budget]
max_instances = 4
[apps.shop]
hosts = ["shop.test", "127.0.0.1"]
[apps.shop.pool]
min_instances = 1
idle_ttl = "60s"
orphan_timeout = "6s"
[apps.shop.backend]
type = "process"
mode = "fork"
app = "{apps}:shop"
[apps.blog]
hosts = ["blog.test"]
[apps.blog.pool]
min_instances = 1
idle_ttl = "60s"
orphan_timeout = "6s"
[apps.blog.backend]
type = "process"
mode = "fork"
app = "{apps}:blog"
"""
ORPHAN_TIMEOUT = 6.0


async def held(p: ProxyProcess) -> dict[str, set[int]]:
    """Per app, the pids this replica's instances and their templates run as."""
    out: dict[str, set[int]] = {}
    for row in await instances(p):
        if row["state"] == "ready":
            meta = row["meta"]
            out.setdefault(row["app"], set()).update({int(meta["pid"]), int(meta["template_pid"])})
    return out


async def owners(p: ProxyProcess) -> set[str]:
    return {row["owner"] for row in await instances(p)}


async def both_apps_ready(p: ProxyProcess) -> dict[str, set[int]]:
    async def ready() -> bool:
        return set(await held(p)) == {"shop", "blog"}

    await eventually(ready, 30, f"both apps ready on {p.url}")
    return await held(p)


def running(pids: set[int]) -> bool:
    return all(_procfs.is_running(pid) for pid in pids)


def left_of(owner_ids: set[str]) -> int:
    """Processes (templates, forks, spares) of these owners still alive on this host."""
    return sum(
        1
        for pid in _procfs.all_pids()
        if (env := _procfs.read_environ(pid))
        and env.get(leftovers.OWNER_VAR) in owner_ids
        and _procfs.is_running(pid)
    )


def alive(pids_by_app: dict[str, set[int]]) -> None:
    for app, pids in pids_by_app.items():
        assert running(pids), f"{app}: {pids} reaped"


async def test_replicas_of_two_apps_never_reap_each_others(
    proxy_process: Callable[[str], ProxyProcess], tmp_path: object
) -> None:
    text = CONFIG.format(name=f"apps-replicas-{id(tmp_path) % 10**8}", apps=APPS)
    a = proxy_process(text)
    await a.start(30)
    a_pids = await both_apps_ready(a)
    a_owners = await owners(a)
    assert len(a_owners) == 2  # one owner per app's generation

    b = proxy_process(text)
    async with _Slow(a, "/?sleep=3"):  # B's startup scan runs while A serves
        await b.start(30)
        b_pids = await both_apps_ready(b)
    alive(a_pids)
    assert await held(a) == a_pids  # the same forks, the same templates
    assert not set().union(*a_pids.values()) & set().union(*b_pids.values())
    await asyncio.sleep(3)  # A's reaper sweeps every second: B's, alive, are not its
    alive(b_pids)
    assert await held(b) == b_pids

    async with _Slow(a, "/?sleep=3"):  # B shuts down cleanly: only its own go
        b_owners = await owners(b)
        b.signal(signal.SIGTERM)
        assert await b.wait(60) == 0
    assert left_of(b_owners) == 0
    alive(a_pids)

    await b.start(30)  # B again, then SIGKILLed: A reaps what it left, and only that
    b_pids = await both_apps_ready(b)
    b_owners = await owners(b)
    assert left_of(b_owners) > 0
    b.kill()
    t0 = time.monotonic()
    await eventually(
        lambda: left_of(b_owners) == 0, ORPHAN_TIMEOUT + 10, "what B left to be reaped"
    )
    took = time.monotonic() - t0
    print(f"B's templates and forks were gone {took:.1f}s after its SIGKILL")
    alive(a_pids)
    assert await held(a) == a_pids
    assert left_of(a_owners) >= 4  # two templates, two forks (and any spares)
    assert await get(a.url + "/") == 200
