"""Section 4, elasticity: the spike shape through locust against forkproxy, /instances sampled
every 0.5 s; instance-seconds vs their lower bound, errors, and time to scale back in."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from loadtest.load.locustrun import run_locust
from loadtest.report import plots
from loadtest.report.stats import (
    in_flight,
    instance_seconds,
    instance_seconds_lower_bound,
    live,
    time_to_scale_in,
)
from loadtest.run.proxy import FORK_BACKEND, app_config, forkproxy
from loadtest.run.sampler import InstanceSampler
from loadtest.sections.model import BenchContext, Section, Table, say


def burst_end(series: list[dict[str, Any]]) -> float | None:
    """Wall-clock time of the last history row at peak user count (the spike's end)."""
    peak = max((r["users"] for r in series if not math.isnan(r["users"])), default=0)
    rows = [r for r in series if r["users"] == peak and peak > 0]
    return rows[-1]["ts"] if rows else None


async def _spike(
    ctx: BenchContext, sec: Section, pool: dict[str, Any], env: dict[str, str], label: str
) -> dict[str, Any]:
    """One spike through a fresh forkproxy with these pool settings."""
    async with forkproxy(ctx.work, f"elastic-{label}", app_config(FORK_BACKEND), pool) as fp:
        async with InstanceSampler(fp.admin, 0.5) as sampler:
            wall0 = time.time() - sampler.now()
            run = await run_locust(
                fp.url,
                ctx.work / "locust" / f"spike-{label}",
                shape="spike",
                env=env,
                kill_after=300,
            )
            # Keep watching until the pool is back at min_instances (or give up).
            settle_deadline = time.monotonic() + 30
            while time.monotonic() < settle_deadline:
                last = sampler.samples[-1][1] if sampler.samples else []
                if len(live(last)) <= pool["min_instances"]:
                    break
                await asyncio.sleep(0.5)
        sec.commands.append(f"proxy ({label}): {fp.command} with {fp.settings}")
    sec.commands.append(f"load ({label}): {run.command}")
    samples = sampler.samples
    series = run.series()
    end_ts = burst_end(series)
    scale_in = time_to_scale_in(samples, end_ts - wall0, pool["min_instances"]) if end_ts else None
    used = instance_seconds(samples)
    bound = instance_seconds_lower_bound(samples, pool["max_concurrency"])
    return {
        "label": label,
        "run": run,
        "samples": samples,
        "series": series,
        "wall0": wall0,
        "end_ts": end_ts,
        "scale_in": scale_in,
        "used": used,
        "bound": bound,
        "requests": run.count(),
        "failures": run.count("Failure Count"),
        "peak": max((len(live(i)) for _, i in samples), default=0),
        "sampler_errors": sampler.errors,
    }


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
    runs = []
    for routing in ("least_loaded", "pack"):  # the default routing, then packing
        say(f"  spike ({routing}): {idle}s idle, {users} users for {burst}s, {after}s idle")
        runs.append(await _spike(ctx, sec, {**pool, "routing": routing}, env, routing))
    rows = [
        [
            r["label"],
            r["requests"],
            r["failures"],
            r["peak"],
            r["used"],
            r["bound"],
            r["used"] / r["bound"] if r["bound"] else math.nan,
            r["scale_in"],
            r["run"].p99_ms(),
        ]
        for r in runs
    ]
    sec.tables.append(
        Table(
            [
                "routing",
                "requests",
                "errors",
                "peak instances",
                "instance-s used",
                "instance-s lower bound",
                "used / bound",
                "scale-in s",
                "p99 ms",
            ],
            rows,
            f"spike {idle}s/{burst}s/{after}s, {users} users, max_concurrency "
            f"{pool['max_concurrency']}, target_concurrency {pool['target_concurrency']}, "
            f"idle_ttl {pool['idle_ttl']}",
        )
    )
    sec.notes.append(
        "Lower bound: for each second, ceil(mean in-flight / max_concurrency) instances, "
        "in-flight sampled from /instances every 0.5 s. Scale-in: from the end of the spike "
        "until the live instance count is back at min_instances "
        f"({pool['min_instances']}); idle_ttl is {pool['idle_ttl']}, so that is its floor. "
        "routing = least_loaded (the default) spreads requests, so under steady load every "
        "instance stays a little busy and none reaches idle_ttl; pack fills the busiest "
        "instance below target_concurrency, so surplus instances go idle and are reaped."
    )
    for r in runs:
        if r["run"].returncode != 0:
            sec.notes.append(
                f"locust ({r['label']}) exited with {r['run'].returncode}: {r['run'].output[-300:]}"
            )
        name = "elasticity.png" if r["label"] == "least_loaded" else f"elasticity-{r['label']}.png"
        png = ctx.out / name
        wall0, end_ts = r["wall0"], r["end_ts"]
        await asyncio.to_thread(
            plots.elasticity,
            png,
            [(x["ts"] - wall0, x["rps"], x["p99_ms"], x["users"]) for x in r["series"]],
            [
                (t, len(live(i)), math.ceil(in_flight(i) / pool["max_concurrency"]))
                for t, i in r["samples"]
            ],
            ((end_ts - wall0 - burst) if end_ts else None, (end_ts - wall0) if end_ts else None),
        )
        sec.plots.append(png.name)
    d, pk = runs
    scale_txt = f"{d['scale_in']:.1f} s" if d["scale_in"] is not None else "not within the run"
    ratio = d["used"] / d["bound"] if d["bound"] else math.nan
    pk_ratio = pk["used"] / pk["bound"] if pk["bound"] else math.nan
    sec.headline = (
        f"Elasticity: under a {users}-user spike the pool grew to {d['peak']} instances and "
        f"used {d['used']:.0f} instance-seconds, {ratio:.1f}x the lower bound of "
        f"{d['bound']:.0f} ({pk_ratio:.1f}x with routing = pack); "
        f"{d['failures'] + pk['failures']} errors of {d['requests'] + pk['requests']}; back to "
        f"min_instances {scale_txt} after the spike (idle_ttl {pool['idle_ttl']})."
    )
    sec.data = {
        "env": env,
        "pool": pool,
        "runs": [
            {
                "routing": r["label"],
                "requests": r["requests"],
                "failures": r["failures"],
                "peak_instances": r["peak"],
                "instance_seconds": r["used"],
                "instance_seconds_lower_bound": r["bound"],
                "scale_in_seconds": r["scale_in"],
                "p99_ms": r["run"].p99_ms(),
                "sampler_errors": r["sampler_errors"],
                "samples": [[round(t, 2), len(live(i)), in_flight(i)] for t, i in r["samples"]],
            }
            for r in runs
        ],
    }
    return sec
