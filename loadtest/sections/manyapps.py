"""Section 7, many apps (issue 24): 100 generated aiohttp, Flask and Django apps behind one
listener, driven open-loop by Host header with a seeded heavy-tailed trace (most apps
rarely or never called, a few hot and bursty: loadtest/load/manyapps_trace.py), against
three ways to host them: always-on `gunicorn -w 1` per app, fork starts with a fixed 90 s
keep-alive, and forkproxy's defaults. Reports the memory each held over time (PSS of the
whole process tree), latency of the hot apps and of the first request to an idle app,
cold starts and errors."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from forkproxy.loadtest.load import openloop
from forkproxy.loadtest.load.manyapps_trace import (
    CLASSES,
    ManyAppsTrace,
    class_counts,
    idle_firsts,
    make_trace,
)
from forkproxy.loadtest.report.stats import memory_seconds, percentile, ratio
from forkproxy.loadtest.run import configs
from forkproxy.loadtest.run.manyapps_apps import VARIANTS, accepted_template_key, config, write_apps
from forkproxy.loadtest.run.memtree import MemorySampler, wait_quiet
from forkproxy.loadtest.run.procs import REPO, Proc, forkproxy_cmd, free_port, spawn, wait_http
from forkproxy.loadtest.run.sampler import fetch_instances
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

N_APPS = 100
SEED = 24
SLOWEST = 20  # hot requests kept in the data, slowest first
IDLE_S = 60.0  # a request to an app that had none for this long counts as "to an idle app"
BOOT_S = 600.0  # 100 interpreters importing Django side by side on 2 shared cores
QUIET_S = 120.0  # then at most this long for the imports to settle (a busy box never is)
LABELS = {
    "always-on": "always-on (gunicorn -w 1 per app)",
    "keepalive-90s": "fork, 90 s keep-alive",
    "defaults": "fork, forkproxy defaults",
}


def counters(text: str) -> dict[str, float]:
    """Instance starts (ok) and requests that waited on a start, from /metrics."""
    out = {"starts": 0.0, "failed_starts": 0.0, "cold": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "forkproxy_instance_starts_total":
                key = "starts" if s.labels.get("result") == "ok" else "failed_starts"
                out[key] += s.value
            elif (
                s.name == "forkproxy_request_duration_seconds_count"
                and s.labels.get("kind") == "cold"
            ):
                out["cold"] += s.value
    return out


async def _metrics(admin: str) -> dict[str, float]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(f"{admin}/metrics") as resp,
    ):
        return counters(await resp.text())


async def _ready_count(admin: str) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        insts = await fetch_instances(s, admin)
    return sum(1 for i in insts if str(i.get("state", "")).lower() == "ready")


async def _start_proxy(
    ctx: BenchContext, variant: str, doc: dict[str, Any]
) -> tuple[Proc, str, str, str]:
    path = ctx.work / f"manyapps-{variant}.toml"
    await asyncio.to_thread(path.write_text, configs.dumps(doc))
    port, admin_port = free_port(), free_port()
    argv = [
        *forkproxy_cmd(),
        "run",
        "--config",
        str(path),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin_port}",
        "--log-level",
        "info",  # the access log (config: server.access_log) is logged at info
    ]
    proc = await spawn(f"forkproxy-manyapps-{variant}", argv, ctx.work / "logs", cwd=REPO)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        await wait_http(f"{admin}/healthz", BOOT_S, proc)
    except BaseException:
        await proc.stop(grace=30)
        raise
    command = shlex.join(["forkproxy", *argv[len(forkproxy_cmd()) :]])
    return proc, f"http://127.0.0.1:{port}", admin, command


REQUEST_ID = "ma{}"
_ACCESS = re.compile(r" queue=[\d.]+ms( cold)? instance=\S+ id=ma(\d+)$", re.M)


def cold_requests(access_log: str) -> set[int]:
    """Schedule indexes of the requests the proxy logged as cold (they waited on a start)."""
    return {int(m.group(2)) for m in _ACCESS.finditer(access_log) if m.group(1)}


def summarise(
    trace: ManyAppsTrace,
    results: Sequence[openloop.Result],
    idle: set[int],
    cold: set[int],
) -> dict[str, Any]:
    hot = {i for i, a in enumerate(trace.apps) if a.rate_class == "hot"}
    ok = [r for r in results if r.status == 200 and not r.error]
    hot_ms = [r.latency * 1000 for r in ok if trace.arrivals[r.index][1] in hot]
    idle_ms = [r.latency * 1000 for r in ok if r.index in idle]
    idle_warm = [r.latency * 1000 for r in ok if r.index in idle and r.index not in cold]
    idle_cold = [r.latency * 1000 for r in ok if r.index in idle and r.index in cold]
    errors = [r for r in results if r.status != 200 or r.error]
    # where the hot apps' tail comes from: the slowest, when they were sent, cold or not
    slow = sorted((r for r in ok if trace.arrivals[r.index][1] in hot), key=lambda r: -r.latency)[
        :SLOWEST
    ]
    return {
        "requests": len(results),
        "errors": len(errors),
        "error_examples": sorted({r.error or f"HTTP {r.status}" for r in errors})[:3],
        "hot_requests": len(hot_ms),
        "hot_p50_ms": percentile(hot_ms, 50),
        "hot_p99_ms": percentile(hot_ms, 99),
        "idle_requests": len(idle_ms),
        "idle_p50_ms": percentile(idle_ms, 50),
        "idle_max_ms": max(idle_ms, default=float("nan")),
        "idle_warm": len(idle_warm),
        "idle_warm_p50_ms": percentile(idle_warm, 50),
        "idle_cold": len(idle_cold),
        "idle_cold_p50_ms": percentile(idle_cold, 50),
        "client_late_p99_ms": percentile([r.late * 1000 for r in results], 99),
        "hot_slowest": [
            (round(r.at, 2), round(r.latency * 1000, 1), r.index in cold) for r in slow
        ],
    }


async def run_variant(
    ctx: BenchContext,
    variant: str,
    trace: ManyAppsTrace,
    folders: dict[str, Path],
    template_key: tuple[str, str] | None,
) -> dict[str, Any]:
    name = f"manyapps-{variant}-{os.getpid()}"
    doc = config(variant, trace.apps, folders, name, template_key)
    t0 = time.monotonic()
    proc, url, admin, command = await _start_proxy(ctx, variant, doc)
    try:
        if variant == "always-on":
            while (n := await _ready_count(admin)) < len(trace.apps):
                failed = (await _metrics(admin))["failed_starts"]
                if (
                    time.monotonic() - t0 > BOOT_S
                    or proc.proc.returncode is not None
                    or failed >= len(trace.apps)
                ):
                    raise RuntimeError(
                        f"{variant}: {n}/{len(trace.apps)} instances ready after "
                        f"{time.monotonic() - t0:.0f}s, {failed:.0f} starts failed\n{proc.tail()}"
                    )
                await asyncio.sleep(1.0)
        await wait_quiet(proc.pid, within=min(QUIET_S, BOOT_S - (time.monotonic() - t0)))
        boot_s = time.monotonic() - t0
        say(f"  manyapps {variant}: ready after {boot_s:.0f}s; {trace.duration:.0f}s of load")
        before = await _metrics(admin)
        schedule = [(t, trace.apps[i].host) for t, i in trace.arrivals]
        sampler = MemorySampler(proc.pid, interval=1.0)
        async with sampler.running():
            results = await openloop.run(f"{url}/", schedule, request_id=REQUEST_ID.format)
            rest = trace.duration - sampler.samples[-1][0] if sampler.samples else 0.0
            await asyncio.sleep(max(0.0, rest))  # memory over the whole window
        after = await _metrics(admin)
    finally:
        await proc.stop(grace=60)
    mem = [(t, mib) for t, mib, _ in sampler.samples]
    log = await asyncio.to_thread(proc.log.read_text, errors="replace")
    summary = summarise(trace, results, idle_firsts(trace, IDLE_S), cold_requests(log))
    starts = after["starts"] - before["starts"]
    mib_s = memory_seconds(mem, 0.0, trace.duration)
    return {
        **summary,
        "command": command,
        "config": doc,
        "boot_s": round(boot_s, 1),
        "memory_gib_s": mib_s / 1024,
        "mean_mib": mib_s / trace.duration,
        "peak_mib": max((m for _, m in mem), default=float("nan")),
        "peak_processes": max((n for _, _, n in sampler.samples), default=0),
        "starts": starts,
        "cold_requests": after["cold"] - before["cold"],
        "cold_starts_per_1k": ratio(starts * 1000, summary["requests"]),
        "memory": sampler.samples,
    }


def _rate(per_s: float) -> str:
    if per_s >= 1 / 60:
        return f"{per_s * 60:.3g}/min" if per_s < 1 else f"{per_s:.3g}/s"
    return f"{per_s * 3600:.3g}/h" if per_s >= 1 / 3600 else f"{per_s * 86400:.3g}/day"


def _trace_table(trace: ManyAppsTrace) -> Table:
    per_app: dict[int, int] = {}
    for _, i in trace.arrivals:
        per_app[i] = per_app.get(i, 0) + 1
    rows = []
    for c, idx in trace.by_class().items():
        rates = [trace.apps[i].rate for i in idx]
        reqs = sum(per_app.get(i, 0) for i in idx)
        rows.append(
            [
                c,
                len(idx),
                f"{_rate(min(rates, default=0))} .. {_rate(max(rates, default=0))}",
                reqs,
                sum(1 for i in idx if per_app.get(i)),
            ]
        )
    return Table(
        ["rate class", "apps", "mean rate", "requests in trace", "apps called at all"],
        rows,
        f"The trace (seed {trace.seed}, {trace.duration:.0f} s, {len(trace.arrivals)} requests)",
    )


def _tables(results: dict[str, dict[str, Any]]) -> list[Table]:
    rows = [
        [
            LABELS[v],
            r["requests"],
            r["errors"],
            r["memory_gib_s"],
            r["mean_mib"],
            r["peak_mib"],
            r["peak_processes"],
            r["hot_p50_ms"],
            r["hot_p99_ms"],
            f"{r['idle_p50_ms']:.1f} / {r['idle_max_ms']:.1f} (n={r['idle_requests']})",
            f"{r['idle_warm_p50_ms']:.1f} (n={r['idle_warm']})",
            f"{r['idle_cold_p50_ms']:.1f} (n={r['idle_cold']})",
            r["cold_starts_per_1k"],
            r["boot_s"],
        ]
        for v, r in results.items()
    ]
    main = Table(
        [
            "variant",
            "requests",
            "errors",
            "memory GiB·s",
            "mean MiB",
            "peak MiB",
            "peak processes",
            "hot p50 ms",
            "hot p99 ms",
            f"first request to an app idle >= {IDLE_S:.0f} s, p50 / max ms",
            "of which to a kept instance, p50 ms",
            "of which cold (started one), p50 ms",
            "cold starts / 1k requests",
            "ready after s",
        ],
        rows,
    )
    ratios = []
    for v, r in results.items():
        row: list[Any] = [LABELS[v]]
        for base in ("always-on", "keepalive-90s"):
            b = results.get(base)
            row += [
                ratio(r["memory_gib_s"], b["memory_gib_s"]) if b else float("nan"),
                ratio(r["peak_mib"], b["peak_mib"]) if b else float("nan"),
            ]
        b = results.get("always-on")
        row.append(ratio(r["hot_p99_ms"], b["hot_p99_ms"]) if b else float("nan"))
        ratios.append(row)
    return [
        main,
        Table(
            [
                "variant",
                "memory·s / always-on",
                "peak / always-on",
                "memory·s / 90 s keep-alive",
                "peak / 90 s keep-alive",
                "hot p99 / always-on",
            ],
            ratios,
            "Ratios",
        ),
    ]


def _plot(ctx: BenchContext, variant: str, r: dict[str, Any], trace: ManyAppsTrace) -> str:
    from forkproxy.loadtest.report import plots  # matplotlib only when a plot is drawn

    path = ctx.out / f"manyapps-{variant}.png"
    per_s = [0] * (int(trace.duration) + 1)
    for t, _ in trace.arrivals:
        per_s[int(t)] += 1
    plots.memory_over_time(
        path,
        f"{len(trace.apps)} apps: {LABELS[variant]}",
        [(t, mib) for t, mib, _ in r["memory"]],
        per_s,
    )
    return path.name


def _headline(n: int, duration: float, results: dict[str, dict[str, Any]]) -> str:
    if "defaults" not in results:
        return ""
    d = results["defaults"]
    parts = [f"forkproxy defaults hold {d['mean_mib']:.0f} MiB on average"]
    for base, label in (("always-on", "always-on gunicorn"), ("keepalive-90s", "90 s keep-alive")):
        if base in results:
            b = results[base]
            parts.append(
                f"{ratio(d['memory_gib_s'], b['memory_gib_s']):.0%} of {label}'s memory·s "
                f"({b['mean_mib']:.0f} MiB)"
            )
    errors = sum(r["errors"] for r in results.values())
    requests = sum(r["requests"] for r in results.values())
    return (
        f"Many apps ({n} apps, {duration:.0f} s heavy-tailed trace): "
        + ", ".join(parts)
        + f"; hot-app p99 {d['hot_p99_ms']:.0f} ms; {errors} errors in {requests} requests."
    )


async def run(ctx: BenchContext) -> Section:
    return await run_apps(ctx, N_APPS, ctx.pick(600.0, 60.0))


async def run_apps(
    ctx: BenchContext,
    n_apps: int,
    duration: float,
    variants: Sequence[str] = VARIANTS,
    seed: int = SEED,
) -> Section:
    sec = Section(
        "manyapps",
        f"Many apps: {n_apps} apps behind one listener, always-on vs 90 s keep-alive vs defaults",
    )
    trace = make_trace(n_apps, duration, seed)
    folders = await asyncio.to_thread(write_apps, ctx.work / "manyapps", trace.apps)
    template_key = await asyncio.to_thread(accepted_template_key)
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        say(f"  manyapps: {LABELS[v]}")
        try:
            results[v] = await run_variant(ctx, v, trace, folders, template_key)
        except (RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as e:
            sec.fail(f"manyapps, {LABELS[v]}", e)
            continue
        r = results[v]
        sec.commands.append(f"{v}: {r['command']} (config: $WORK/manyapps-{v}.toml)")
        if r["errors"]:
            sec.fail(f"manyapps, {LABELS[v]}", f"{r['errors']} errors: {r['error_examples']}")
        sec.plots.append(await asyncio.to_thread(_plot, ctx, v, r, trace))
    sec.tables.append(_trace_table(trace))
    if results:
        sec.tables += _tables(results)
    counts = class_counts(n_apps)
    sec.notes += [
        f"The trace: {n_apps} apps (aiohttp, Flask and Django in turn), each app's mean rate "
        "drawn log-uniform inside its class so that the classes match Shahrad et al., "
        '"Serverless in the Wild" (USENIX ATC 2020): '
        + ", ".join(f"{counts[c]} {c}" for c in CLASSES)
        + " (45 % at most once an hour, 81 % at most once a minute; the hot apps switch "
        "between busy and quiet spells). Open-loop: each request is sent at its time, "
        "by Host header, whatever the earlier ones are doing. Same trace for every variant.",
        "always-on: each app is a real `gunicorn -w 1` (aiohttp apps with gunicorn's aiohttp "
        "worker), started by forkproxy's process backend in exec mode with min_instances = "
        "max_instances = 1 and never stopped: forkproxy only routes by Host, as an nginx "
        "in front of 100 gunicorns would. Its memory is the gunicorn masters and workers "
        "plus the proxy.",
        "Memory: PSS summed over the proxy and every process below it (templates, "
        "instances, gunicorn masters and workers), sampled every second from "
        "/proc/PID/smaps_rollup; memory·s integrates it over the load window, from the "
        "moment the variant is ready (boot not included: see 'ready after').",
        "Template keep-alive for the 90 s variant: "
        + (
            f'`{template_key[0]}.{template_key[1]} = "90s"`.'
            if template_key
            else "this checkout has no key for it (only instances get 90 s). Every fork-mode "
            "app then keeps its own template process for the whole run, called or not: "
            "most of the fork variants' memory is those 100 templates."
        ),
        "The first request to an idle app is split by the proxy's access log "
        "(`server.access_log`, one X-Request-ID per request): served by a kept instance "
        "(the instance rung), or cold, i.e. it waited on a start (a fork from the app's "
        "template in fork mode). The access log does not say whether that template was "
        "still up or had to be rebuilt first, so the template rung is not split further. "
        "Cold starts / 1k requests: the proxy's `forkproxy_instance_starts_total` over "
        "the load window.",
        "Shared 2-core box: the load generator, the proxy and every app share the CPUs, "
        "so the hot apps' p99 moves with whatever else runs; the slowest hot requests "
        "(time sent, ms, cold or not) are kept in results.json (`hot_slowest`) to tell a "
        "stall of the box (warm requests bunched at one moment) from cold starts.",
    ]
    sec.headline = _headline(n_apps, duration, results)
    sec.data = {
        "n_apps": n_apps,
        "duration": duration,
        "seed": seed,
        "template_key": template_key,
        "results": {v: {k: x for k, x in r.items() if k != "config"} for v, r in results.items()},
    }
    return sec
