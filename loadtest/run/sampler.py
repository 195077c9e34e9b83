"""Poll the proxy's admin /instances at a fixed interval while a load test runs.

Owns its polling task: use it as an async context manager so the task is always awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from forkproxy.loadtest.report.stats import Sample


def parse_instances(doc: Any) -> list[Mapping[str, Any]]:
    """Accept either a bare list or {"instances": [...]} from /instances."""
    if isinstance(doc, dict):
        doc = doc.get("instances", [])
    if not isinstance(doc, list):
        raise ValueError(f"/instances: expected a list, got {type(doc).__name__}")
    return [i for i in doc if isinstance(i, dict)]


async def fetch_listing(
    session: aiohttp.ClientSession, admin_url: str
) -> tuple[list[Mapping[str, Any]], int]:
    """/instances: the instances, and the spares the backend holds outside the pool."""
    async with session.get(f"{admin_url}/instances") as resp:
        resp.raise_for_status()
        doc = await resp.json(content_type=None)
    spares = doc.get("spares", 0) if isinstance(doc, dict) else 0
    return parse_instances(doc), int(spares or 0)


async def fetch_instances(
    session: aiohttp.ClientSession, admin_url: str
) -> list[Mapping[str, Any]]:
    return (await fetch_listing(session, admin_url))[0]


class InstanceSampler:
    """`async with InstanceSampler(admin) as s:` ... `s.samples` [(t since start, instances)],
    and `s.spares[i]` the backend's spares at `s.samples[i]`."""

    def __init__(self, admin_url: str, interval: float = 0.5) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.interval = interval
        self.samples: list[Sample] = []
        self.spares: list[int] = []
        self.errors = 0
        self.t0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def __aenter__(self) -> InstanceSampler:
        self.t0 = time.monotonic()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self._task = asyncio.create_task(self._run())  # noqa: TID251 - cancelled+awaited in __aexit__
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def sample_once(self) -> list[Mapping[str, Any]] | None:
        assert self._session is not None
        try:
            insts, spares = await fetch_listing(self._session, self.admin_url)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            self.errors += 1
            return None
        self.samples.append((self.now(), insts))
        self.spares.append(spares)
        return insts

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            await self.sample_once()
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
