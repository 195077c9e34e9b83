"""`python -m loadtest bench [--quick] [--out DIR]`: every benchmark in one go, on this machine.

Writes DIR/results.json, DIR/results.md and PNG plots, and refreshes docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from forkproxy.loadtest.report import markdown, table
from forkproxy.loadtest.report.progress import Progress
from forkproxy.loadtest.sections.model import BenchContext, Section, say

SECTIONS = ("datapath", "coldstart", "burst", "elasticity", "tune", "memory", "manyapps")
# Seconds each section takes (full, quick) on the 2-CPU reference box (section_seconds in
# results.json, docker and vcsim up): what the ETA is computed from.
EXPECTED_S = {
    "datapath": (280.0, 32.0),  # + the mypyc build and its target, + the profile
    "coldstart": (80.0, 36.0),
    "burst": (5.0, 2.0),
    "elasticity": (700.0, 36.0),
    "tune": (170.0, 50.0),
    "memory": (12.0, 10.0),
    "manyapps": (2100.0, 330.0),  # 3 variants x (10 min | 1 min) of load + 100 apps' boots
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    p.add_argument("--out", default="results/latest", help="output directory (results/latest)")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    p.add_argument(
        "--no-docs", action="store_true", help="do not refresh docs/BENCHMARKS.md and docs/bench/"
    )
    p.add_argument(
        "--no-install", action="store_true", help="never apt-get install missing wrk/nginx"
    )


def _runner(name: str, ctx: BenchContext) -> Callable[[], Awaitable[Section]]:
    require = os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") == "1"
    if name == "datapath":
        from forkproxy.loadtest.sections import datapath

        return lambda: datapath.run(ctx, require_tools=require)
    if name == "coldstart":
        from forkproxy.loadtest.sections import coldstart

        return lambda: coldstart.run(ctx)
    if name == "burst":
        from forkproxy.loadtest.sections import burst

        return lambda: burst.run(ctx)
    if name == "elasticity":
        from forkproxy.loadtest.sections import elasticity

        return lambda: elasticity.run(ctx)
    if name == "tune":
        from forkproxy.loadtest.sections import tune

        return lambda: tune.run(ctx)
    if name == "manyapps":
        from forkproxy.loadtest.sections import manyapps

        return lambda: manyapps.run(ctx)
    from forkproxy.loadtest.sections import memory

    return lambda: memory.run(ctx)


def _print(sec: Section) -> None:
    for t in sec.tables:
        say(f"  {t.title}" if t.title else "")
        say(table.render(t.headers, t.rows, indent="  "))
    for c in sec.commands:
        say(f"  $ {c}")


def _datapath_plot(ctx: BenchContext, sec: Section) -> None:
    from forkproxy.loadtest.report import (
        plots,  # matplotlib loads in ~0.5 s: only when a plot is drawn
    )

    res = sec.data.get("results", {})
    if not res:
        return
    path = ctx.out / "datapath.png"
    plots.bars(
        path, "GET / at 32 connections", list(res), [r["rps"] for r in res.values()], "requests/s"
    )
    sec.plots.append(path.name)


async def _section(name: str, ctx: BenchContext) -> Section:
    say(f"== {name}")
    t0 = time.monotonic()
    try:
        sec = await _runner(name, ctx)()
    except Exception as e:
        # A broken section is reported as such; the others still run.
        sec = Section(name, f"{name}: FAILED")
        sec.fail(name, e)
        traceback.print_exc()
    if name == "datapath":
        await asyncio.to_thread(_datapath_plot, ctx, sec)
    sec.data["section_seconds"] = round(time.monotonic() - t0, 1)
    _print(sec)
    return sec


async def run(args: argparse.Namespace, out: Path) -> int:
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        print(f"unknown sections: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="forkproxy-bench-") as work:
        ctx = BenchContext(
            out=out, work=Path(work), quick=args.quick, install_tools=not args.no_install
        )
        sections: list[Section] = []
        expected = [EXPECTED_S[name][1 if args.quick else 0] for name in wanted]
        with Progress("bench", expected, unit="sections") as progress:
            for i, name in enumerate(wanted):
                progress.start(i, name)
                sections.append(await _section(name, ctx))
        failed = sum(bool(s.failures) for s in sections)
    meta = {
        "work": work,
        "command": "python -m loadtest bench"
        + (" --quick" if args.quick else "")
        + (f" --only {','.join(wanted)}" if set(wanted) != set(SECTIONS) else ""),
        "quick": args.quick,
        "loadavg_1m_at_start": load_at_start,
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.monotonic() - started,
        "machine": markdown.machine(),
        "failed_sections": failed,
    }
    written = await asyncio.to_thread(
        markdown.write, out, sections, meta, not args.no_docs, order=SECTIONS
    )
    for p in written:
        say(f"wrote {p}")
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run(args, out))
