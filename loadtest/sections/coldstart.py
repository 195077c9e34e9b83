"""Section 2, cold start: time to first byte for a request that has to start a fresh instance,
through an idle forkproxy (max_requests_per_instance = 1: every request gets a new instance)."""

from __future__ import annotations

import asyncio
from typing import Any

from loadtest.coldstart import ROW_KEYS, run_all, start_row, ttfb_series
from loadtest.report import plots
from loadtest.run.proxy import EXEC_BACKEND, FORK_BACKEND, app_config, forkproxy
from loadtest.sections.model import BenchContext, Section, Table, say


async def through_proxy(ctx: BenchContext, sec: Section, n: int) -> list[dict[str, Any]]:
    pool = {
        "min_instances": 0,
        "warm_pool": 0,
        "max_requests_per_instance": 1,
        "idle_ttl": "1s",
        "max_instances": 4,
    }
    rows = []
    variants = (
        ("fork", FORK_BACKEND),
        ("fork, prefork=1", {**FORK_BACKEND, "prefork": 1}),  # examples/fork.toml's setting
        ("exec", EXEC_BACKEND),
    )
    for label, backend in variants:
        try:
            name = "cold-" + label.replace(", ", "-").replace("=", "")
            async with forkproxy(ctx.work, name, app_config(backend), pool) as fp:
                sec.commands.append(
                    f"proxy cold start ({label}): {fp.command} with {fp.settings}; "
                    f"{n} sequential GET / on new connections, 0.2 s apart"
                )
                say(f"  cold start through forkproxy, process {label}: {n} requests")
                ttfb, ids, failures = await ttfb_series(fp.url + "/", n, 0.2)
        except (RuntimeError, TimeoutError) as e:
            sec.fail(f"through forkproxy, process {label}", e)
            continue
        path = f"client -> forkproxy -> new process ({label})"
        rows.append(start_row(path, ttfb, failures, len(ids)))
    return rows


async def run(ctx: BenchContext) -> Section:
    sec = Section("coldstart", "Cold start: time to first byte for a request on a new instance")
    n = ctx.pick(30, 5)
    rows = await run_all(ctx, sec, n)  # the per-backend benches, each optional
    rows += await through_proxy(ctx, sec, n)
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
    sec.data = {"n": n, "rows": rows}
    return sec
