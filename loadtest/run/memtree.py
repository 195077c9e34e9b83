"""Memory (PSS) of a whole process tree over time: the proxy, its templates, instances and
anything they started (a gunicorn master and its worker). Reads /proc/PID/smaps_rollup
through the backends' own reader (backends/support/memory.py), in a thread (one pass
over /proc per sample).

Also tells when a tree has gone quiet (its CPU time stops rising): a bench starts its
load once every template has finished importing, not while they still do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import psutil

from forkproxy.backends.support import memory
from forkproxy.backends.support.tasks import TaskSet


def tree_pss(root: int) -> tuple[int, int]:
    """(bytes of PSS over root and every descendant, processes counted)."""
    total, n = 0, 0
    for pid in memory.tree(root):
        size = memory.pss(pid)
        if size is not None:
            total += size
            n += 1
    return total, n


def tree_cpu_seconds(root: int) -> float:
    try:
        procs = [psutil.Process(root)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.user + t.system
    return total


async def wait_quiet(root: int, within: float, busy_below: float = 0.15) -> float:
    """Wait until the tree uses under `busy_below` of a CPU over 2 s, at most `within` s.
    Returns the seconds waited."""
    t0 = time.monotonic()
    before = await asyncio.to_thread(tree_cpu_seconds, root)
    while time.monotonic() - t0 < within:
        await asyncio.sleep(2.0)
        now = await asyncio.to_thread(tree_cpu_seconds, root)
        if now - before < busy_below * 2.0:
            break
        before = now
    return time.monotonic() - t0


class MemorySampler:
    """`async with MemorySampler(pid) as m:` ... `m.samples`: (seconds since start, MiB,
    processes), one every `interval` s while the block runs."""

    def __init__(self, root: int, interval: float = 1.0) -> None:
        self.root = root
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []
        self.t0 = 0.0

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            total, n = await asyncio.to_thread(tree_pss, self.root)
            self.samples.append((time.monotonic() - self.t0, total / 2**20, n))
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MemorySampler]:
        self.t0 = time.monotonic()
        tasks = TaskSet("memory-sampler")
        tasks.spawn(self._run(), "sample")
        try:
            yield self
        finally:
            await tasks.aclose()
