"""Shared by the admin tests: bounded load through a running proxy, and the live
stream read the way the page and `forkproxy top` read it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from forkproxy.proxy import top

# small instances so a few concurrent requests need several of them
POOL = {"max_concurrency": 2, "target_concurrency": 1, "idle_ttl": "60s", "max_instances": 6}


async def bounded_load(url: str, *, workers: int, seconds: float, ms: int = 300) -> int:
    """`workers` clients each sending /io?ms=... back to back for `seconds`; returns the
    number of 200s. Bounded in time and count."""
    ok = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while time.monotonic() < deadline:
            async with session.get(f"{url}/io?ms={ms}") as r:
                await r.read()
                ok += r.status == 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return ok


async def samples(admin: str, count: int, token: str | None = None) -> list[dict[str, Any]]:
    """The next `count` samples from /events (after the history)."""
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        async for event, data in top.events(session, admin, token):
            if event == "sample":
                out.append(data)
                if len(out) == count:
                    break
    return out


def table_key(row: dict[str, Any]) -> tuple[str, str, str, int, int, str]:
    """What must agree across /instances, the stream, top and the page at one moment
    (age and idle move with the clock; they are compared with a tolerance)."""
    return (
        str(row["id"]),
        str(row["backend"]),
        str(row["state"]),
        int(row["in_flight"]),
        int(row.get("requests_served", row.get("served", -1))),
        str(row["endpoint"] or ""),
    )


async def sample_after(admin: str, t: float, token: str | None = None) -> dict[str, Any]:
    """The first sample taken at or after wall-clock time `t`."""
    async with aiohttp.ClientSession() as session:
        async for event, data in top.events(session, admin, token):
            if event == "sample" and data["t"] >= t:
                return dict(data)
    raise AssertionError("the stream ended")
