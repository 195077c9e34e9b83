"""`forkproxy tune`: short load tests over a small grid of [pool] settings, each against a fresh
forkproxy; recommends the cheapest setting (instance-seconds) that meets a p99 target.

  forkproxy tune --config app.toml --shape spike --p99 250 --budget 300 --out pool.toml

Grid values are comma lists; target_concurrency may be a fraction of max_concurrency ("70%").
The shape reads its FORKPROXY_* variables (loadtest/load/profiles.py) from the environment, except
FORKPROXY_SHAPE_SECONDS, which tune sets so each run fits its share of the budget.
Exit status: 0 when a setting meets the target, 1 when none does (the snippet then holds the
best p99 seen), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import math
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.support.table import ConfigError
from loadtest.load.locustrun import run_locust
from loadtest.load.profiles import PROFILES
from loadtest.report.progress import Progress
from loadtest.report.stats import instance_seconds, live
from loadtest.report.table import render
from loadtest.run import configs
from loadtest.run.procs import REPO
from loadtest.run.proxy import FORK_BACKEND, app_config, forkproxy
from loadtest.run.sampler import InstanceSampler
from proxy.config import parse

BENCH_EXTRA = ("locust", "tomli_w", "rich")  # what tune runs on, beyond forkproxy's own deps
OVERHEAD_S = 6.0  # per grid point: proxy start, locust start-up, shutdown
MIN_RUN_S = 4.0  # a shorter load test says nothing


@dataclass(frozen=True)
class Point:
    max_concurrency: int
    target_concurrency: float
    warm_pool: int
    idle_ttl: str

    def label(self) -> str:
        """Short enough for a progress line; the names match the results table's headers."""
        return (
            f"max_conc {self.max_concurrency} target {self.target_concurrency:g} "
            f"warm_pool {self.warm_pool} idle_ttl {self.idle_ttl}"
        )

    def pool(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.max_concurrency,
            "target_concurrency": self.target_concurrency,
            "warm_pool": self.warm_pool,
            "idle_ttl": self.idle_ttl,
        }


@dataclass
class Measured:
    point: Point
    seconds: float
    requests: int
    failures: int
    p99_ms: float
    instance_seconds: float
    peak_instances: int
    error: str = ""

    def meets(self, p99_target: float, max_error_rate: float) -> bool:
        if self.error or self.requests == 0 or math.isnan(self.p99_ms):
            return False
        return self.p99_ms <= p99_target and self.failures <= max_error_rate * self.requests


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _target(raw: str, max_c: int) -> float:
    raw = raw.strip()
    value = max_c * float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    return round(min(value, float(max_c)), 2)


def grid(args: argparse.Namespace) -> list[Point]:
    points = []
    for mc, tc, wp, ttl in itertools.product(
        _ints(args.max_concurrency),
        _strs(args.target_concurrency),
        _ints(args.warm_pool),
        _strs(args.idle_ttl),
    ):
        p = Point(mc, _target(tc, mc), wp, ttl)
        if p not in points:  # "70%" and an absolute value can collide
            points.append(p)
    return points


def pick(results: Sequence[Measured], p99: float, max_error_rate: float) -> tuple[Measured, bool]:
    """The cheapest point that meets the target; else the one with the best p99 (met=False)."""
    ok = [r for r in results if r.meets(p99, max_error_rate)]
    if ok:
        return min(ok, key=lambda r: (r.instance_seconds, r.p99_ms)), True
    usable = [r for r in results if not r.error and r.requests]
    if not usable:
        raise ValueError("no grid point produced a measurement")
    return min(usable, key=lambda r: (r.failures / r.requests, _nan_last(r.p99_ms))), False


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


def snippet(best: Measured, met: bool, args: argparse.Namespace) -> str:
    verdict = "meets" if met else "does NOT meet"
    head = (
        f"# forkproxy tune: shape {args.shape}, {verdict} the p99 target of {args.p99:g} ms\n"
        f"# measured: p99 {best.p99_ms:.0f} ms, {best.instance_seconds:.1f} instance-seconds, "
        f"{best.failures}/{best.requests} failed, over {best.seconds:.0f} s\n"
    )
    return head + configs.dumps({"pool": best.point.pool()})


def table(results: Sequence[Measured], best: Measured | None) -> str:
    headers = [
        "max_conc",
        "target",
        "warm_pool",
        "idle_ttl",
        "requests",
        "failed",
        "p99 ms",
        "inst-s",
        "peak",
        "",
    ]
    rows = []
    for r in results:
        mark = "<- recommended" if r is best else r.error[:90]
        p = r.point
        rows.append(
            [
                p.max_concurrency,
                p.target_concurrency,
                p.warm_pool,
                p.idle_ttl,
                r.requests,
                r.failures,
                r.p99_ms,
                r.instance_seconds,
                r.peak_instances,
                mark,
            ]
        )
    return render(headers, rows)


def config_problems(base: dict[str, Any], point: Point) -> str:
    """The proxy's own config parser on the merged config: "" if valid, else the problems."""
    doc = configs.merge(base, {"pool": point.pool()})
    try:
        parse(doc, "<tune>")
    except ConfigError as exc:
        return "invalid: " + "; ".join(str(p) for p in exc.problems)
    return ""


async def measure(
    base: dict[str, Any], point: Point, seconds: float, args: argparse.Namespace, work: Path, i: int
) -> Measured:
    # A user's config resolves relative paths from where they run tune; ours from the repo.
    cwd = Path.cwd() if args.config else REPO
    pool = {**base.get("pool", {}), **point.pool()}
    env = {"FORKPROXY_SHAPE_SECONDS": f"{seconds:g}"}
    t0 = time.monotonic()
    try:
        async with (
            forkproxy(
                work,
                f"tune-{i}",
                base,
                pool,
                wait_instances=int(pool.get("min_instances", 0)),
                cwd=cwd,
            ) as fp,
            InstanceSampler(fp.admin, 0.5) as sampler,
        ):
            run = await run_locust(
                fp.url,
                work / f"locust-{i}",
                shape=args.shape,
                env=env,
                kill_after=seconds + 60,
            )
            await sampler.sample_once()  # close the last interval at the end of the load
    except (RuntimeError, TimeoutError, OSError) as e:
        return Measured(
            point, time.monotonic() - t0, 0, 0, math.nan, math.nan, 0, str(e).splitlines()[0]
        )
    error = "" if run.returncode == 0 else f"locust exit {run.returncode}"
    samples = sampler.samples
    return Measured(
        point=point,
        seconds=time.monotonic() - t0,
        requests=run.count(),
        failures=run.count("Failure Count"),
        p99_ms=run.p99_ms(),
        instance_seconds=instance_seconds(samples),
        peak_instances=max((len(live(insts)) for _, insts in samples), default=0),
        error=error,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", help="app config TOML (default: the bundled example app, fork mode)"
    )
    p.add_argument(
        "--shape", default="spike", choices=sorted(PROFILES), help="locust load shape (spike)"
    )
    p.add_argument("--p99", type=float, default=250.0, help="p99 latency target in ms (250)")
    p.add_argument("--max-error-rate", type=float, default=0.0, help="allowed failed fraction (0)")
    p.add_argument("--budget", type=float, default=300.0, help="total seconds for all runs (300)")
    p.add_argument("--max-concurrency", default="4,10", help="grid values (4,10)")
    p.add_argument(
        "--target-concurrency", default="70%", help="grid values, absolute or %% of max (70%%)"
    )
    p.add_argument("--warm-pool", default="0,1", help="grid values (0,1)")
    p.add_argument("--idle-ttl", default="2s,10s", help="grid values (2s,10s)")
    p.add_argument("--out", help="write the recommended [pool] snippet here (TOML)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The tune options alone (tests and callers holding an argv)."""
    p = argparse.ArgumentParser(prog="forkproxy tune", description=__doc__)
    add_arguments(p)
    return p.parse_args(list(argv))


def load_base(path: str | None) -> dict[str, Any]:
    if not path:
        return app_config(FORK_BACKEND)
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    doc.pop("tune", None)
    return doc


def plan(budget: float, n: int) -> tuple[float, int]:
    """Seconds of load per point and how many points fit: split evenly, but never below
    MIN_RUN_S of load (then the tail of the grid is skipped)."""
    load_s = budget / n - OVERHEAD_S
    if load_s >= MIN_RUN_S:
        return load_s, n
    return MIN_RUN_S, max(1, int(budget // (MIN_RUN_S + OVERHEAD_S)))


async def run(args: argparse.Namespace, base: dict[str, Any], points: list[Point]) -> int:
    results: list[Measured] = []
    t_start = time.monotonic()
    skipped: list[Point] = []
    # Invalid points cost no load-test time: the proxy would refuse to start anyway.
    valid: list[Point] = []
    for point in points:
        problem = config_problems(base, point)
        if problem:
            results.append(Measured(point, 0.0, 0, 0, math.nan, math.nan, 0, problem))
        else:
            valid.append(point)
    load_s, runnable = plan(args.budget - (time.monotonic() - t_start), max(1, len(valid)))
    expected = [load_s + OVERHEAD_S] * min(runnable, len(valid))
    with (
        tempfile.TemporaryDirectory(prefix="forkproxy-tune-") as work,
        Progress("tune", expected, unit="points") as progress,
    ):
        for i, point in enumerate(valid):
            spent = time.monotonic() - t_start
            if i >= runnable or spent + load_s + OVERHEAD_S > args.budget * 1.1:
                skipped = valid[i:]
                break
            progress.start(i, point.label())
            results.append(await measure(base, point, load_s, args, Path(work), i))
    if skipped:
        print(
            f"budget of {args.budget:g} s exhausted: skipped {len(skipped)} of {len(valid)} "
            f"runnable grid points: {', '.join(str(p.pool()) for p in skipped)}",
            file=sys.stderr,
        )
    try:
        best, met = pick(results, args.p99, args.max_error_rate)
    except ValueError as e:
        print(table(results, None))
        print(f"forkproxy tune: {e}", file=sys.stderr)
        return 1
    print(f"shape {args.shape}, {load_s:.0f} s of load per point, p99 target {args.p99:g} ms")
    print(table(results, best))
    text = snippet(best, met, args)
    print()
    print(text, end="")
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text)
        print(f"wrote {args.out}", file=sys.stderr)
    if not met:
        print("no setting met the target; the snippet holds the best p99 seen", file=sys.stderr)
    return 0 if met else 1


def main(args: argparse.Namespace) -> int:
    missing = [m for m in BENCH_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"forkproxy tune: needs {', '.join(missing)}: pip install 'forkproxy[bench]'",
            file=sys.stderr,
        )
        return 2
    try:
        points = grid(args)
        base = load_base(args.config)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as e:
        print(f"forkproxy tune: {e}", file=sys.stderr)
        return 2
    if not points:
        print("forkproxy tune: the grid is empty", file=sys.stderr)
        return 2
    if args.budget <= 0:
        print("forkproxy tune: --budget must be > 0", file=sys.stderr)
        return 2
    return asyncio.run(run(args, base, points))
