"""Section 4, elasticity: the same traces (step, spike, sine, seeded bursty) of closed-loop
users against every backend available with default pool settings (max_concurrency aside)
and against a static pool sized for the peak. Per run: instance-seconds against their lower
bound, p50/p99 against the static pool's, cold starts per 1,000 requests, errors, and the
time back to min_instances once the load has ended."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from forkproxy.loadtest.load.closedloop import LoadRun, run_trace
from forkproxy.loadtest.load.traces import Trace, all_traces
from forkproxy.loadtest.report.stats import Sample, in_flight, live, percentile
from forkproxy.loadtest.report.trace_plot import trace_plot
from forkproxy.loadtest.run.proxy import (
    EXEC_BACKEND,
    FORK_BACKEND,
    RunningProxy,
    app_config,
    forkproxy,
)
from forkproxy.loadtest.run.sampler import InstanceSampler
from forkproxy.loadtest.run.vsphere import vsphere_backend
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

MAX_CONCURRENCY = 4
VSPHERE = "vsphere (vcsim)"
SLOW_TRACES = ("step", "bursty")
TICK = 0.25  # sampling interval: the lower bound is taken per tick
TAIL = 2.0  # instance-seconds are integrated over the load plus this long
DOCKER_IMAGE = "forkproxy-test/httpd:latest"
IO_PATH = "/io?ms=100"  # the example app: 100 ms of waiting, like a database call
DOCKER_PATH = "/cgi-bin/slow?ms=100"  # the test image's busybox CGI, the same 100 ms


@dataclass(frozen=True)
class Target:
    label: str
    backend: Mapping[str, Any]
    pool: Mapping[str, Any]
    path: str = IO_PATH
    slow: bool = False  # starts take 100s of ms: step and bursty only, to bound run time

    @property
    def slug(self) -> str:
        # "static 12 (docker)" and "static 12 (fork)" must not share a config file or name
        words = "".join(c if c.isalnum() else " " for c in self.label.replace("vcsim", ""))
        return "-".join(words.split())


@dataclass
class Result:
    target: str
    trace: str
    run: LoadRun
    samples: list[Sample]
    used: float
    bound: float
    spare_s: float  # spares (prefork, parked paused containers) integrated like `used`
    scale_in: float | None
    min_instances: int


def targets(peak_users: int, docker: bool) -> list[Target]:
    base = {"max_concurrency": MAX_CONCURRENCY}
    static = math.ceil(peak_users / MAX_CONCURRENCY)
    out = [
        Target("fork", FORK_BACKEND, base),
        Target("fork+prefork", {**FORK_BACKEND, "prefork": 2}, base),
        Target("exec", EXEC_BACKEND, base, slow=True),
    ]
    if docker:
        # a paused pool as deep as the peak: every start is then an unpause, which is what
        # the row measures (a shallower one mixes in creates once a burst empties it)
        paused = {"type": "docker", "image": DOCKER_IMAGE, "paused_pool": static}
        create = {"type": "docker", "image": DOCKER_IMAGE}
        out.append(Target("docker paused", paused, base, DOCKER_PATH))
        out.append(Target("docker create", create, base, DOCKER_PATH, slow=True))
        # backend filled in at run time (vcsim harness + parent VM: elastic_vsphere)
        out.append(Target(VSPHERE, {}, base, DOCKER_PATH, slow=True))
    pinned = {**base, "min_instances": static, "max_instances": static, "idle_ttl": "10m"}
    if docker:  # the p99 baseline of the rows serving the busybox CGI
        out.append(Target(f"static {static} (docker)", create, pinned, DOCKER_PATH))
    out.append(Target(f"static {static} (fork)", FORK_BACKEND, pinned))  # last: --quick keeps it
    return out


def static_for(r: Result, rs: Sequence[Result]) -> Result | None:
    """The static pool a row's p99 is judged against: the one serving the same app."""
    busybox = r.target.startswith(("docker", VSPHERE)) or r.target.endswith("(docker)")
    family = "docker" if busybox else "fork"
    return next((s for s in rs if s.target.startswith("static") and family in s.target), None)


async def docker_available() -> str | None:
    """None if the engine answers and has the test image, else why not."""
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "image",
        "inspect",
        DOCKER_IMAGE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return f"no Docker engine or image {DOCKER_IMAGE}: {err.decode().strip()[:200]}"
    return None


def integrate(
    samples: Sequence[Sample], spares: Sequence[int], until: float
) -> tuple[float, float, float]:
    """Instance-seconds used, their lower bound (ceil(in-flight / max_concurrency) per tick)
    and spare-seconds over the samples up to `until` (seconds since the trace started);
    spares[i] is the backend's spare count at samples[i]."""
    used = bound = spare_s = 0.0
    for ((t0, insts), (t1, _)), n_spare in zip(itertools.pairwise(samples), spares, strict=False):
        if t0 >= until:
            break
        dt = min(t1, until) - t0
        used += len(live(insts)) * dt
        bound += math.ceil(in_flight(insts) / MAX_CONCURRENCY) * dt
        spare_s += n_spare * dt
    return used, bound, spare_s


def back_to_min(samples: Sequence[Sample], since: float, floor: int) -> float | None:
    for t, insts in samples:
        if t >= since and len(live(insts)) <= floor:
            return max(0.0, t - since)
    return None


async def _settle(sampler: InstanceSampler, floor: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        last = sampler.samples[-1][1] if sampler.samples else None
        if last is not None and len(live(last)) <= floor:
            return
        await asyncio.sleep(TICK)


async def _one(fp: RunningProxy, target: Target, trace: Trace, settle: float) -> Result:
    """One trace, then up to `settle` seconds for the pool to get back to min_instances
    (where the next trace starts, if it made it)."""
    floor = int(target.pool.get("min_instances", 0))
    async with InstanceSampler(fp.admin, TICK) as sampler:
        run = await run_trace(fp.url, trace, path=target.path)
        await _settle(sampler, floor, settle)
        await asyncio.sleep(TICK)
    end = run.end - sampler.t0
    used, bound, spare_s = integrate(sampler.samples, sampler.spares, end + TAIL)
    scale_in = back_to_min(sampler.samples, end, floor)
    return Result(
        target.label, trace.name, run, sampler.samples, used, bound, spare_s, scale_in, floor
    )


async def run(ctx: BenchContext) -> Section:
    sec = Section("elasticity", "Elasticity: step, spike, sine and bursty traces, per backend")
    # full length by default: step is then the anchor run (8 s / 14 s / 8 s), and the
    # moments every trace shares (the first burst, the last request) weigh what they do there
    scale = float(os.environ.get("FORKPROXY_ELASTIC_SCALE", ctx.pick(1.0, 0.3)))
    traces = all_traces(scale)
    if ctx.quick:
        traces = traces[:2]
    peak = max(t.peak for t in traces)
    why_not = await docker_available() if not ctx.quick else "quick run: fork and static only"
    if why_not:
        sec.skip("docker backends", why_not)
    tgts = targets(peak, docker=why_not is None)
    if ctx.quick:
        tgts = [tgts[0], tgts[-1]]
    settle = ctx.pick(4.0, 3.0)
    results: list[Result] = []
    for target in tgts:
        mine = [t for t in traces if not target.slow or t.name in SLOW_TRACES]
        say(f"  {target.label}: {', '.join(t.name for t in mine)}")
        name = f"elastic-{target.slug}"
        try:
            async with contextlib.AsyncExitStack() as stack:
                backend = dict(target.backend)
                if target.label == VSPHERE:
                    try:
                        backend = await stack.enter_async_context(
                            vsphere_backend(f"{name}-{os.getpid()}-")
                        )
                    except Exception as exc:  # no simulator here: say so, go on
                        sec.skip("vsphere backend", f"{type(exc).__name__}: {exc}")
                        continue
                base = app_config(backend, name)
                fp = await stack.enter_async_context(forkproxy(ctx.work, name, base, target.pool))
                sec.commands.append(f"proxy ({target.label}): {fp.command} with {fp.settings}")
                for trace in mine:
                    r = await _one(fp, target, trace, settle)
                    results.append(r)
                    say(f"    {trace.name}: {_row(r, None)}")
        except Exception as exc:  # one backend failing must not sink the section
            sec.fail(f"elasticity {target.label}", exc)
    _report(ctx, sec, traces, results, scale)
    return sec


def _row(r: Result, static: Result | None) -> list[Any]:
    ratio = r.used / r.bound if r.bound else math.nan
    p50, p99 = r.run.p_ms(50), r.run.p_ms(99)
    rel = _p99_vs(r, static)
    return [
        r.target,
        r.run.requests,
        r.run.errors,
        max((len(live(i)) for _, i in r.samples), default=0),
        r.used,
        r.bound,
        ratio,
        r.spare_s,
        p50,
        p99,
        rel,
        r.run.cold_per_1000(),
        percentile(r.run.cold_latencies, 99) * 1000,  # NaN: no request waited on a start
        r.scale_in,
    ]


HEADERS = [
    "backend",
    "requests",
    "errors",
    "peak instances",
    "instance-s",
    "lower bound",
    "used / bound",
    "spare-s",
    "p50 ms",
    "p99 ms",
    "p99 / static",
    "cold per 1k",
    "cold p99 ms",
    "back to min s",
]


def _report(
    ctx: BenchContext, sec: Section, traces: list[Trace], results: list[Result], scale: float
) -> None:
    by_trace: dict[str, list[Result]] = {}
    for r in results:
        by_trace.setdefault(r.trace, []).append(r)
    for trace in traces:
        rs = by_trace.get(trace.name, [])
        sec.tables.append(
            Table(
                HEADERS,
                [_row(r, static_for(r, rs)) for r in rs],
                f"{trace.name}: {trace.describe}",
            )
        )
        png = ctx.out / f"elasticity-{trace.name}.png"
        users = [(t, trace.users_at(t)) for t in _grid(trace.duration + 4)]
        series = [
            (
                r.target,
                [
                    (t, len(live(i)), math.ceil(in_flight(i) / MAX_CONCURRENCY))
                    for t, i in r.samples
                ],
            )
            for r in rs
        ]
        trace_plot(png, f"{trace.name}: instances vs lower bound ({trace.describe})", users, series)
        sec.plots.append(png.name)
    sec.notes.append(
        f"Closed-loop users (GET {IO_PATH} on the example app, {DOCKER_PATH} on the docker "
        "test image; 50-150 ms think time), in-process asyncio, traces time-scaled by "
        f"{scale} (FORKPROXY_ELASTIC_SCALE). Every pool has defaults except max_concurrency = "
        f"{MAX_CONCURRENCY} (the static pool: min = max = ceil(peak users / max_concurrency), "
        "idle_ttl 10m). /instances sampled every 0.25 s; instance-seconds count starting, "
        "ready and draining instances, integrated from the trace's start to 2 s after its "
        "last request; the lower bound is ceil(in-flight / max_concurrency) per sample. "
        "'spare-s': the warm capacity a backend holds outside the pool (prefork children, "
        "parked paused containers; /instances' spares), integrated the same way. Spares take "
        "no request until a start hands one over, so they are not in instance-s or used / "
        "bound; they hold memory all the same. "
        "'cold per 1k': answers whose Server-Timing says they waited on a start, "
        "'cold p99 ms' their latency (what a burst's starts cost the requests that wait "
        "for them). "
        f"Backends whose starts take 100s of ms ({', '.join(SLOW_TRACES)} only, to bound "
        "the run time): exec, docker create, vsphere. 'p99 / static' compares each row with "
        "the static pool serving the same app: the fork rows with the static fork pool, the "
        "docker and vsphere rows (busybox CGI) with a static docker pool of the same size. "
        "'back to min s': from the last request's end until live instances <= min_instances "
        "(n/a: not within the settle limit)."
    )
    sec.data = {
        "scale": scale,
        "runs": [
            {
                "backend": r.target,
                "trace": r.trace,
                "requests": r.run.requests,
                "errors": r.run.errors,
                "instance_seconds": r.used,
                "lower_bound": r.bound,
                "spare_seconds": r.spare_s,
                "p50_ms": r.run.p_ms(50),
                "p99_ms": r.run.p_ms(99),
                "cold_per_1000": r.run.cold_per_1000(),
                "cold_p99_ms": percentile(r.run.cold_latencies, 99) * 1000
                if r.run.cold_latencies
                else None,
                "back_to_min_s": r.scale_in,
                "samples": [[round(t, 2), len(live(i)), in_flight(i)] for t, i in r.samples],
            }
            for r in results
        ],
    }
    fork = _of(results, "fork")
    if fork:
        errors = sum(r.run.errors for r in results)
        paused = _of(results, "docker paused")
        also = f"; docker paused {_ratios(paused, results)}" if paused else ""
        sec.headline = (
            "Elasticity, default pool settings (max_concurrency aside), instance-seconds / "
            f"lower bound: fork {_ratios(fork, results)}{also}; {errors} errors in "
            f"{sum(r.run.requests for r in results)} requests over every backend."
        )


def _of(results: Sequence[Result], target: str) -> list[Result]:
    return [r for r in results if r.target == target]


def _ratios(rs: Sequence[Result], everything: Sequence[Result]) -> str:
    """'1.27 step (p99 0.99x static), ...': per trace, instance-seconds / lower bound and
    p99 against the static pool serving the same app in that trace."""
    out = []
    for r in rs:
        if not r.bound:
            continue
        rel = _p99_vs(r, static_for(r, [x for x in everything if x.trace == r.trace]))
        shown = "n/a" if math.isnan(rel) else f"{rel:.2f}x"
        out.append(f"{r.used / r.bound:.2f} {r.trace} (p99 {shown} static)")
    return ", ".join(out)


def _p99_vs(r: Result, static: Result | None) -> float:
    """p99 against the static pool's (NaN without one that answered)."""
    return r.run.p_ms(99) / static.run.p_ms(99) if static and static.run.latencies else math.nan


def _grid(until: float) -> list[float]:
    return [i * 0.1 for i in range(int(until / 0.1) + 1)]
