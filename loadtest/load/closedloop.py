"""Closed-loop users following a Trace, in-process on asyncio: each active user sends a
request, waits for the answer, thinks, and repeats. Light enough to run 48 users beside
the sampler on a 2-core machine, and exact about when the load starts and stops."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import aiohttp

from forkproxy.loadtest.load.traces import Trace
from forkproxy.loadtest.report.stats import percentile


@dataclass
class LoadRun:
    t0: float  # monotonic time the trace started
    end: float = 0.0  # monotonic time the last request finished: the load's end
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: int = 0
    # seconds, the successful answers whose Server-Timing says they waited on a start
    cold_latencies: list[float] = field(default_factory=list)

    @property
    def cold(self) -> int:
        return len(self.cold_latencies)

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    def p_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def cold_per_1000(self) -> float:
        return 1000 * self.cold / self.requests if self.requests else 0.0


async def run_trace(
    url: str,
    trace: Trace,
    *,
    path: str = "/io?ms=100",
    think: tuple[float, float] = (0.05, 0.15),
    seed: int = 1,
) -> LoadRun:
    rng = random.Random(seed)
    run = LoadRun(t0=time.monotonic())
    timeout = aiohttp.ClientTimeout(total=60)

    def active(i: int) -> bool:
        return i < trace.users_at(time.monotonic() - run.t0)

    async def user(i: int, session: aiohttp.ClientSession) -> None:
        while True:
            while not active(i):
                if time.monotonic() - run.t0 >= trace.duration:
                    return
                await asyncio.sleep(0.02)
            t = time.monotonic()
            cold = False
            try:
                async with session.get(url + path) as r:
                    await r.read()
                    ok = r.status == 200
                    cold = "cold" in r.headers.get("Server-Timing", "")
            except (aiohttp.ClientError, OSError, TimeoutError):
                ok = False
            done = time.monotonic()
            if ok:
                run.latencies.append(done - t)
                if cold:
                    run.cold_latencies.append(done - t)
            else:
                run.errors += 1
            run.end = max(run.end, done)
            await asyncio.sleep(rng.uniform(*think))

    conn = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=conn, timeout=timeout) as session,
        asyncio.TaskGroup() as tg,
    ):
        for i in range(trace.peak):
            tg.create_task(user(i, session))
    return run
