"""Section 4, elasticity: the spike shape through locust against forkproxy, /instances sampled
every 0.5 s; instance-seconds vs their lower bound, errors, and time to scale back in."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from loadtest import plots
from loadtest.locustrun import run_locust
from loadtest.proxyrun import FORK_BACKEND, app_config, forkproxy
from loadtest.sampler import InstanceSampler
from loadtest.section import BenchContext, Section, Table, say
from loadtest.stats import (
    in_flight,
    instance_seconds,
    instance_seconds_lower_bound,
    live,
    time_to_scale_in,
)


def burst_end(series: list[dict[str, Any]]) -> float | None:
    """Wall-clock time of the last history row at peak user count (the spike's end)."""
    peak = max((r["users"] for r in series if not math.isnan(r["users"])), default=0)
    rows = [r for r in series if r["users"] == peak and peak > 0]
    return rows[-1]["ts"] if rows else None


async def run(ctx: BenchContext) -> Section:
    sec = Section("elasticity", "Elasticity: a traffic spike through locust")
    idle, burst, after = ctx.pick((5, 20, 20), (2, 8, 10))
    users = ctx.pick(60, 30)
    env = {
        "FORKPROXY_SPIKE_USERS": str(users),
        "FORKPROXY_SPIKE_IDLE": str(idle),
        "FORKPROXY_SPIKE_BURST": str(burst),
        "FORKPROXY_SPIKE_AFTER": str(after),
        "FORKPROXY_SPAWN_RATE": str(users),
        "FORKPROXY_WAIT_MIN": "0.1",
        "FORKPROXY_WAIT_MAX": "0.5",
        "FORKPROXY_IO_MS": "200",
    }
    pool: dict[str, Any] = {
        "min_instances": 0,
        "max_concurrency": 4,
        "target_concurrency": 3.0,
        "max_instances": 30,
        "idle_ttl": "3s",
    }
    async with forkproxy(ctx.work, "elastic", app_config(FORK_BACKEND), pool) as fp:
        say(f"  spike: {idle}s idle, {users} users for {burst}s, {after}s idle")
        async with InstanceSampler(fp.admin, 0.5) as sampler:
            wall0 = time.time() - sampler.now()
            run = await run_locust(
                fp.url, ctx.work / "locust" / "spike", shape="spike", env=env, kill_after=300
            )
            # Keep watching until the pool is back at min_instances (or give up).
            settle_deadline = time.monotonic() + 30
            while time.monotonic() < settle_deadline:
                last = sampler.samples[-1][1] if sampler.samples else []
                if len(live(last)) <= pool["min_instances"]:
                    break
                await asyncio.sleep(0.5)
        sec.commands.append(f"proxy: {fp.command} with {fp.settings}")
    sec.commands.append(f"load: {run.command}")
    samples = sampler.samples
    series = run.series()
    end_ts = burst_end(series)
    scale_in = time_to_scale_in(samples, end_ts - wall0, pool["min_instances"]) if end_ts else None
    used = instance_seconds(samples)
    bound = instance_seconds_lower_bound(samples, pool["max_concurrency"])
    reqs, fails = run.count(), run.count("Failure Count")
    peak_instances = max((len(live(i)) for _, i in samples), default=0)
    row = [
        reqs,
        fails,
        peak_instances,
        used,
        bound,
        used / bound if bound else math.nan,
        scale_in,
        run.p99_ms(),
    ]
    sec.tables.append(
        Table(
            [
                "requests",
                "errors",
                "peak instances",
                "instance-s used",
                "instance-s lower bound",
                "used / bound",
                "scale-in s",
                "p99 ms",
            ],
            [row],
            f"spike {idle}s/{burst}s/{after}s, {users} users, max_concurrency "
            f"{pool['max_concurrency']}, idle_ttl {pool['idle_ttl']}",
        )
    )
    sec.notes.append(
        "Lower bound: for each second, ceil(mean in-flight / max_concurrency) instances, "
        "in-flight sampled from /instances every 0.5 s. Scale-in: from the end of the spike "
        "until the live instance count is back at min_instances "
        f"({pool['min_instances']}); idle_ttl is {pool['idle_ttl']}, so that is its floor."
    )
    if run.returncode != 0:
        sec.notes.append(f"locust exited with {run.returncode}: {run.output[-300:]}")
    png = ctx.out / "elasticity.png"
    await asyncio.to_thread(
        plots.elasticity,
        png,
        [(r["ts"] - wall0, r["rps"], r["p99_ms"], r["users"]) for r in series],
        [(t, len(live(i)), math.ceil(in_flight(i) / pool["max_concurrency"])) for t, i in samples],
        ((end_ts - wall0 - burst) if end_ts else None, (end_ts - wall0) if end_ts else None),
    )
    sec.plots.append(png.name)
    scale_txt = f"{scale_in:.1f} s" if scale_in is not None else "not within the run"
    sec.headline = (
        f"Elasticity: under a {users}-user spike the pool grew to {peak_instances} instances and "
        f"used {used:.0f} instance-seconds, {used / bound if bound else math.nan:.1f}x the "
        f"lower bound of {bound:.0f}; {fails} errors of {reqs}; back to min_instances "
        f"{scale_txt} after the spike (idle_ttl {pool['idle_ttl']})."
    )
    sec.data = {
        "env": env,
        "pool": pool,
        "requests": reqs,
        "failures": fails,
        "peak_instances": peak_instances,
        "instance_seconds": used,
        "instance_seconds_lower_bound": bound,
        "scale_in_seconds": scale_in,
        "p99_ms": run.p99_ms(),
        "sampler_errors": sampler.errors,
        "samples": [[round(t, 2), len(live(i)), in_flight(i)] for t, i in samples],
    }
    return sec
