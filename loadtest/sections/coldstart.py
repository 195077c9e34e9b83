"""Section 2, cold start: time to first byte for a request that has to start a fresh instance,
through an idle forkproxy (max_requests_per_instance = 1: every request gets a new instance)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from forkproxy.loadtest.coldstart import ROW_KEYS, floors, forkfloor, start_row
from forkproxy.loadtest.coldstart.contract import BACKENDS, load
from forkproxy.loadtest.load.httpload import wrk_path
from forkproxy.loadtest.report import plots
from forkproxy.loadtest.run.procs import REPO
from forkproxy.loadtest.run.proxy import EXEC_BACKEND, FORK_BACKEND, app_config, forkproxy
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

COLD_POOL = {
    "min_instances": 0,
    "warm_pool": 0,
    "max_requests_per_instance": 1,
    "idle_ttl": "1s",
    "max_instances": 4,
}
# A fresh instance per request under sustained load: room for every wrk connection to start.
FRESH_POOL = {**COLD_POOL, "max_instances": 16, "max_starting": 8}
FRESH_LEVELS = (1, 8)


async def run_all(ctx: BenchContext, sec: Section, n: int) -> list[dict[str, Any]]:
    """Every backend's cold-start series where it can run: a missing module or dependency,
    an engine that is not there or a series that fails is a "skipped: reason" line."""
    rows: list[dict[str, Any]] = []
    for name, modname in BACKENDS.items():
        what = f"{name} backend"
        try:
            bench = load(name)
        except ModuleNotFoundError as e:
            sec.skip(what, f"{modname} needs {e.name}")
            continue
        try:
            result = await bench.series(n, ctx.work / name)
        except Exception as e:  # an unavailable engine must not sink the whole benchmark
            sec.skip(what, f"{type(e).__name__}: {e}")
            continue
        rows.extend(result.rows)
        sec.commands.extend(result.commands)
        for skipped, why in result.skipped:
            sec.skip(skipped, why)
    return rows


async def through_proxy(ctx: BenchContext, sec: Section, n: int) -> list[dict[str, Any]]:
    """Each variant's cold requests interleaved with warm ones to one warm instance (another
    proxy), all by the same raw client on new connections: 'added' is the cold start's own."""
    rows = []
    variants = (
        ("fork", FORK_BACKEND),
        ("fork, prefork=1", {**FORK_BACKEND, "prefork": 1}),  # examples/fork.toml's setting
        ("exec", EXEC_BACKEND),
    )
    warm_pool = {"min_instances": 1, "max_instances": 1, "idle_ttl": "10m"}
    async with forkproxy(ctx.work, "cold-warm", app_config(FORK_BACKEND), warm_pool) as warm:
        sec.commands.append(f"warm baseline: {warm.command} with {warm.settings}")
        for label, backend in variants:
            try:
                name = "cold-" + label.replace(", ", "-").replace("=", "")
                async with forkproxy(ctx.work, name, app_config(backend), COLD_POOL) as fp:
                    sec.commands.append(
                        f"proxy cold start ({label}): {fp.command} with {fp.settings}; "
                        f"{n} GET / on new connections, each after a warm one, 0.2 s apart"
                    )
                    say(f"  cold start through forkproxy, process {label}: {n} requests")
                    series = await floors.added_series(fp.url + "/", warm.url + "/", n, 0.2)
            except (RuntimeError, TimeoutError, OSError) as e:
                sec.fail(f"through forkproxy, process {label}", e)
                continue
            path = f"client -> forkproxy -> new process ({label})"
            row = start_row(path, series.pop("ttfb_s"), series["failures"], 0)
            rows.append({**row, **series, "variant": label})
    return rows


async def fresh_instances(ctx: BenchContext, sec: Section) -> list[dict[str, Any]]:
    """Fresh instances per second (max_requests_per_instance = 1) under wrk at 1 and 8
    connections, and the CPU each instance cost, by process."""
    if wrk_path() is None:
        sec.skip("fresh instances/s", "wrk not installed (apt-get install wrk)")
        return []
    seconds = ctx.pick(5.0, 1.0)
    out = []
    async with forkproxy(ctx.work, "fresh", app_config(FORK_BACKEND), FRESH_POOL) as fp:
        sec.commands.append(f"fresh instance per request: {fp.command} with {fp.settings}")
        for c in FRESH_LEVELS:
            say(f"  fresh instance per request: wrk, {c} connections, {seconds:g}s")
            out.append(await floors.fresh_rate(fp, c, seconds))
            sec.commands.append(f"load: {out[-1]['command']}")
    return out


async def run(ctx: BenchContext) -> Section:
    sec = Section("coldstart", "Cold start: time to first byte for a request on a new instance")
    n = ctx.pick(30, 5)
    rows = await run_all(ctx, sec, n)  # the per-backend benches, each optional
    proxied = await through_proxy(ctx, sec, n)
    rows += proxied
    try:
        floor = await forkfloor.measure(str(FORK_BACKEND["app"]), ctx.pick(200, 50), str(REPO))
    except (RuntimeError, TimeoutError, OSError) as e:
        sec.fail("fork floor", e)
        floor = {}
    fresh = await fresh_instances(ctx, sec)
    sec.tables.append(
        Table(
            ["path", "n", "failures", "distinct instances", "p50 ms", "p99 ms", "min ms", "max ms"],
            [[r.get(k) for k in ROW_KEYS] for r in rows],
            f"{n} cold starts each",
        )
    )
    sec.notes.append(
        "Through the proxy, 'distinct instances' equal to n proves every request was served "
        "by a freshly started instance (max_requests_per_instance = 1)."
    )
    plotted = [r for r in rows if r.get("n")]
    if plotted:
        png = ctx.out / "coldstart.png"
        await asyncio.to_thread(
            plots.bars,
            png,
            f"Cold start to first byte, p50 of {n}",
            [str(r["path"]) for r in plotted],
            [float(r["p50_ms"]) for r in plotted],
            "ms (log scale)",
            True,
        )
        sec.plots.append(png.name)
    by = {r["path"]: r for r in rows}
    fork = by.get("client -> forkproxy -> new process (fork)")
    spare = by.get("client -> forkproxy -> new process (fork, prefork=1)")
    exe = by.get("client -> forkproxy -> new process (exec)")
    if fork and exe and fork["n"] and exe["n"]:
        sec.headline = (
            f"Cold start through forkproxy: a request that starts a fresh instance gets its "
            f"first byte in {fork['p50_ms']:.1f} ms (p50; p99 {fork['p99_ms']:.0f} ms) with fork, "
            f"{exe['p50_ms']:.0f} ms with exec ({exe['p50_ms'] / fork['p50_ms']:.0f}x slower)"
        )
        if spare and spare["n"]:
            sec.headline += (
                f"; {spare['p50_ms']:.1f} ms with a prefork spare "
                f"({exe['p50_ms'] / spare['p50_ms']:.0f}x faster than exec)"
            )
        sec.headline += "."
    _floor_tables(sec, proxied, floor, fresh)
    sec.data = {"n": n, "rows": rows, "fork_floor": floor, "fresh": fresh}
    return sec


def _floor_tables(
    sec: Section, proxied: list[dict[str, Any]], floor: dict[str, Any], fresh: list[dict[str, Any]]
) -> None:
    warm = [r["warm_p50_ms"] for r in proxied if r.get("n")]
    warm_p50 = sorted(warm)[len(warm) // 2] if warm else math.nan
    fork_call = floor.get("fork_call_p50_ms", math.nan)
    sec.tables.append(
        Table(
            ["floor", "p50 ms", "p99 ms"],
            [
                ["template's fork() call", fork_call, floor.get("fork_call_p99_ms")],
                [
                    "fork() + child _exit(0) + waitpid",
                    floor.get("cycle_p50_ms"),
                    floor.get("cycle_p99_ms"),
                ],
                ["warm request through forkproxy, new connection", warm_p50, None],
                ["floor: fork() + one warm request", fork_call + warm_p50, None],
                [
                    "a fork running the instance code, no proxy or template messaging: "
                    "fork() -> first byte of a request queued before the fork (its boot "
                    "and first answer)",
                    floor.get("fork_to_first_byte_p50_ms"),
                    None,
                ],
                [
                    "the same fork's second request, new connection (warm)",
                    floor.get("warm_request_same_fork_p50_ms"),
                    None,
                ],
                ["that fork idle: SIGTERM -> reaped", floor.get("sigterm_to_reaped_p50_ms"), None],
                [
                    "that fork's CPU, mean (boot, two requests, exit, teardown)",
                    floor.get("served_fork_cpu_ms"),
                    None,
                ],
            ],
            f"The floor under a fork cold start: a process holding what the template holds "
            f"({floor.get('rss_mib', math.nan):.0f} MiB RSS, "
            f"{floor.get('page_tables_kib', math.nan):.0f} KiB page tables), "
            f"load 1m {floor.get('loadavg_1m', math.nan):.1f}",
        )
    )
    goals = {"fork": 3.0, "fork, prefork=1": 1.5}
    sec.tables.append(
        Table(
            [
                "variant",
                "n",
                "warm p50 ms",
                "cold p50 ms",
                "added p50 ms",
                "added p99 ms",
                "waited on start p50 ms",
                "instance's first answer, extra ms",
                "goal ms",
            ],
            [
                [
                    r["variant"],
                    r["n"],
                    r["warm_p50_ms"],
                    r["cold_p50_ms"],
                    r["added_p50_ms"],
                    r["added_p99_ms"],
                    r["waited_on_start_p50_ms"],
                    r["instance_first_answer_extra_p50_ms"],
                    goals.get(r["variant"]),
                ]
                for r in proxied
            ],
            "Time a cold start adds over a warm request (same raw client, a new connection "
            "each, interleaved); split by the proxy's Server-Timing: waiting on the start "
            "(template + fork + hand-over), the new instance's answer beyond a warm one's, "
            "and the rest (the proxy's own hop on a new upstream connection)",
        )
    )
    if fresh:
        parts = list(fresh[0]["cpu_ms_per_instance"])
        sec.tables.append(
            Table(
                [
                    "connections",
                    "instances/s",
                    "p50 ms",
                    "p99 ms",
                    "errors",
                    "load 1m",
                    *[f"CPU ms/instance: {p}" for p in parts],
                ],
                [
                    [
                        f["connections"],
                        f["instances_per_s"],
                        f["p50_ms"],
                        f["p99_ms"],
                        f["errors"],
                        f["load1"],
                        *[f["cpu_ms_per_instance"][p] for p in parts],
                    ]
                    for f in fresh
                ],
                "A fresh instance per request (max_requests_per_instance = 1) under wrk; the "
                "CPU each instance cost, by process (the instances' own: boot, serve, exit "
                f"and teardown, as their template reaps them). Floor: fork + exit + waitpid "
                f"{floor.get('cycle_p50_ms', math.nan):.2f} ms p50 per instance per core",
            )
        )
    sec.notes.append(
        "Goals (issue 14): cold start added over a warm request <= 3 ms p50 forking on start, "
        "<= 1.5 ms with a prefork spare; >= 500 fresh instances/s at 8 connections with "
        "p99 <= 25 ms."
    )
