"""Section 3, burst from zero: N concurrent requests hit an idle proxy with no instances;
count successes and instances started, and check the scale-out bound."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from forkproxy.loadtest.report.stats import percentile
from forkproxy.loadtest.run.proxy import FORK_BACKEND, app_config, forkproxy
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

WORK_MS = 200  # each request holds its slot this long, so the burst truly overlaps


def starts_from_metrics(text: str) -> dict[str, int]:
    """forkproxy_instance_starts_total by result ("ok" or the failure reason)."""
    out: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "forkproxy_instance_starts_total":
                key = s.labels.get("result", "")
                out[key] = out.get(key, 0) + int(s.value)
    return out


async def burst(url: str, n: int) -> tuple[list[float], dict[int, int], int]:
    """Fire n requests at once; latencies of 200s, status histogram, client-side errors."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    gate = asyncio.Event()

    async def one(s: aiohttp.ClientSession) -> None:
        nonlocal errors
        await gate.wait()
        t0 = time.perf_counter()
        try:
            async with s.get(url) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    latencies.append(time.perf_counter() - t0)
        except (aiohttp.ClientError, OSError, TimeoutError):
            errors += 1

    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(connector=conn, timeout=timeout) as s,
        asyncio.TaskGroup() as tg,
    ):
        for _ in range(n):
            tg.create_task(one(s))
        await asyncio.sleep(0.05)  # every task is parked on the gate
        gate.set()
    return latencies, statuses, errors


async def run(ctx: BenchContext) -> Section:
    sec = Section("burst", "Burst from zero: N concurrent requests at an idle proxy")
    n = ctx.pick(200, 50)
    pool: dict[str, Any] = {
        "min_instances": 0,
        "max_concurrency": 10,  # target_concurrency and idle_ttl: the defaults ("auto")
        "max_starting": 4,
        "max_instances": 50,
        "hold_timeout": "30s",
        "max_queue": 1000,
    }
    async with forkproxy(ctx.work, "burst", app_config(FORK_BACKEND), pool) as fp:
        url = f"{fp.url}/io?ms={WORK_MS}"
        sec.commands.append(
            f"burst: {fp.command} with {fp.settings}; {n} concurrent GET /io?ms={WORK_MS} "
            "released at once (aiohttp, one connection each)"
        )
        say(f"  burst of {n} at an idle proxy")
        before = len(await fp.instances())
        t0 = time.perf_counter()
        latencies, statuses, errors = await burst(url, n)
        wall = time.perf_counter() - t0
        insts = await fp.instances()
        from_metrics = starts_from_metrics(await fp.metrics())
    # Failed starts count too: the bound is about how many starts the burst triggered.
    started = sum(from_metrics.values()) if from_metrics else len(insts)
    bound = math.ceil(n / pool["max_concurrency"]) + pool["max_starting"]
    ok = statuses.get(200, 0)
    row = [
        n,
        ok,
        n - ok,
        started,
        bound,
        started <= bound,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        wall,
    ]
    sec.tables.append(
        Table(
            [
                "N",
                "200 OK",
                "failed",
                "instances started",
                "bound",
                "within bound",
                "p50 ms",
                "p99 ms",
                "wall s",
            ],
            [row],
            f"max_concurrency {pool['max_concurrency']}, max_starting {pool['max_starting']}, "
            f"each request does {WORK_MS} ms of I/O",
        )
    )
    sec.notes.append(
        "bound = ceil(N / max_concurrency) + max_starting: a burst may not start more instances "
        "than it can fill plus the starts already in flight. Instances started come from "
        "`forkproxy_instance_starts_total`"
        + ("" if from_metrics else " (absent: counted from /instances)")
        + f"; latency includes the {WORK_MS} ms of work."
    )
    sec.headline = (
        f"Burst from zero: {ok}/{n} concurrent requests succeeded; the idle proxy started "
        f"{started} instances (bound {bound}: {'met' if started <= bound else 'EXCEEDED'}), "
        f"p99 {row[7]:.0f} ms including {WORK_MS} ms of work."
    )
    sec.data = {
        "n": n,
        "pool": pool,
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "client_errors": errors,
        "instances_before": before,
        "instances_started": started,
        "starts_by_result": from_metrics,
        "instances_listed_after": len(insts),
        "bound": bound,
        "within_bound": started <= bound,
        "p50_ms": row[6],
        "p99_ms": row[7],
        "wall_s": wall,
    }
    return sec
