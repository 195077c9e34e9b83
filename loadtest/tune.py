"""`forkproxy tune`: short load tests over a small grid of [pool] settings, each against a fresh
forkproxy; recommends the cheapest setting (instance-seconds) that meets a p99 target.

  forkproxy tune --config app.toml --paths /,/search?q=x --p99 250 --budget 300 --out pool.toml

What each point sends your app: your own locustfile (--locustfile, driven by --shape unless it
defines its own LoadTestShape), GETs of a list of paths (--paths), or a recorded access log
(--access-log, common/combined format) replayed with its timing, scaled so each point replays
all of it. Without any of them the bundled demo's requests (/, /io, /cpu) are sent.
Failed requests are counted by reason (HTTP status, or the error) for every point.

Grid values are comma lists; target_concurrency may be a fraction of max_concurrency ("70%");
target_concurrency and idle_ttl may be "auto" (the pool prices them from the measured start cost),
routing is pack or least_loaded. The recommendation is compared with the pool's defaults at its
max_concurrency (everything else left to the pool), measured in the same run: from the grid when
the grid holds that point, else by one more run, which the budget sets aside.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forkproxy.backends.support.table import ConfigError
from forkproxy.loadtest.load import accesslog
from forkproxy.loadtest.load.locustrun import LOCUSTFILE, LocustRun, run_locust
from forkproxy.loadtest.load.profiles import PROFILES
from forkproxy.loadtest.report.progress import Progress
from forkproxy.loadtest.report.stats import instance_seconds, live
from forkproxy.loadtest.report.table import render
from forkproxy.loadtest.run import configs
from forkproxy.loadtest.run.procs import REPO
from forkproxy.loadtest.run.proxy import FORK_BACKEND, app_config, forkproxy
from forkproxy.loadtest.run.sampler import InstanceSampler
from forkproxy.proxy.config import parse

BENCH_EXTRA = ("locust", "tomli_w", "rich")  # what tune runs on, beyond forkproxy's own deps
OVERHEAD_S = 6.0  # per grid point: proxy start, locust start-up, shutdown
MIN_RUN_S = 4.0  # a shorter load test says nothing


AUTO = "auto"


@dataclass(frozen=True)
class Point:
    max_concurrency: int
    target_concurrency: float | None  # None: "auto"
    warm_pool: int
    idle_ttl: str  # a duration or "auto"
    routing: str = "pack"

    @classmethod
    def defaults(cls, max_concurrency: int) -> Point:
        """What the pool does with only max_concurrency set (forkproxy.proxy.config.PoolConfig's
        defaults): the baseline a recommendation is compared with."""
        return cls(max_concurrency, None, 0, AUTO, "pack")

    def target(self) -> float | str:
        return AUTO if self.target_concurrency is None else self.target_concurrency

    def label(self) -> str:
        """Short enough for a progress line; the names match the results table's headers."""
        target = AUTO if self.target_concurrency is None else f"{self.target_concurrency:g}"
        return (
            f"max_conc {self.max_concurrency} target {target} warm_pool {self.warm_pool} "
            f"idle_ttl {self.idle_ttl} routing {self.routing}"
        )

    def pool(self) -> dict[str, Any]:
        # Every tuned key is written, "auto" and the defaults too: the base config's own
        # [pool] values for them must not leak into a point (or into the baseline).
        return {
            "max_concurrency": self.max_concurrency,
            "target_concurrency": self.target(),
            "warm_pool": self.warm_pool,
            "idle_ttl": self.idle_ttl,
            "routing": self.routing,
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
    reasons: dict[str, int] = field(default_factory=dict)  # "404" -> count, "ConnectionError"
    # (path, requests, failures, p99 ms) per request name the load sent
    paths: list[tuple[str, int, int, float]] = field(default_factory=list)
    instances: list[int] = field(default_factory=list)  # live instances, one per sample

    def reasons_text(self) -> str:
        """ "404 ×209, ConnectionError ×3", most frequent first."""  # noqa: RUF002
        ranked = sorted(self.reasons.items(), key=lambda x: -x[1])
        return ", ".join(f"{r} ×{n}" for r, n in ranked)  # noqa: RUF001 - "times"

    def why(self) -> str:
        """ "209 failed: 404 ×209" ("" when nothing failed)."""  # noqa: RUF002
        if not self.failures:
            return ""
        return f"{self.failures} failed: {self.reasons_text() or 'reason not recorded'}"

    def meets(self, p99_target: float, max_error_rate: float) -> bool:
        if self.error or self.requests == 0 or math.isnan(self.p99_ms):
            return False
        return self.p99_ms <= p99_target and self.failures <= max_error_rate * self.requests


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _strs(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _target(raw: str, max_c: int) -> float | None:
    raw = raw.strip()
    if raw == AUTO:
        return None
    value = max_c * float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    return round(min(value, float(max_c)), 2)


def grid(args: argparse.Namespace) -> list[Point]:
    points = []
    for mc, tc, wp, ttl, routing in itertools.product(
        _ints(args.max_concurrency),
        _strs(args.target_concurrency),
        _ints(args.warm_pool),
        _strs(args.idle_ttl),
        _strs(args.routing),
    ):
        p = Point(mc, _target(tc, mc), wp, ttl, routing)
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


def baseline_of(results: Sequence[Measured], best: Measured) -> Measured | None:
    """The defaults at the recommendation's max_concurrency, if the grid ran them (a failed
    run included: versus() reports it rather than tune spending a second run on it)."""
    want = Point.defaults(best.point.max_concurrency)
    return next((r for r in results if r.point == want), None)


def _pct(new: float, old: float) -> str:
    if not old or math.isnan(old) or math.isnan(new):
        return ""
    return f" ({(new - old) / old * 100:+.0f} %)"


def versus(best: Measured, base: Measured | None) -> str:
    """One line: the recommendation against the pool's defaults at its max_concurrency."""
    mc = best.point.max_concurrency
    if base is None:
        return f"vs defaults (max_concurrency {mc}): not measured"
    if base.error or not base.requests:
        return f"vs defaults (max_concurrency {mc}): failed: {base.error or 'no requests'}"
    if base is best:
        return f"vs defaults (max_concurrency {mc}): the recommendation is the defaults"
    return (
        f"vs defaults (max_concurrency {mc}): instance-seconds "
        f"{base.instance_seconds:.1f} -> {best.instance_seconds:.1f}"
        f"{_pct(best.instance_seconds, base.instance_seconds)}, "
        f"p99 {base.p99_ms:.0f} -> {best.p99_ms:.0f} ms{_pct(best.p99_ms, base.p99_ms)}, "
        f"failed {base.failures}/{base.requests} -> {best.failures}/{best.requests}"
    )


def snippet(
    best: Measured, met: bool, args: argparse.Namespace, base: Measured | None = None
) -> str:
    verdict = "meets" if met else "does NOT meet"
    why = f" ({best.reasons_text()})" if best.reasons else ""
    head = (
        f"# forkproxy tune: shape {args.shape}, {verdict} the p99 target of {args.p99:g} ms\n"
        f"# measured: p99 {best.p99_ms:.0f} ms, {best.instance_seconds:.1f} instance-seconds, "
        f"{best.failures}/{best.requests} failed{why}, over {best.seconds:.0f} s\n"
        f"# {versus(best, base)}\n"
    )
    return head + configs.dumps({"pool": best.point.pool()})


TABLE_HEADERS = [
    "max_conc",
    "target",
    "warm_pool",
    "idle_ttl",
    "routing",
    "requests",
    "failed",
    "p99 ms",
    "inst-s",
    "peak",
    "",
]


def table_rows(
    results: Sequence[Measured], best: Measured | None, base: Measured | None = None
) -> list[list[Any]]:
    """One row per measured point (TABLE_HEADERS), the pick and the defaults marked."""
    rows = []
    for r in results:
        mark = r.error[:90]
        if r is best:
            mark = "<- recommended (the defaults)" if r is base else "<- recommended"
        elif r is base:
            mark = "<- defaults"
        p = r.point
        rows.append(
            [
                p.max_concurrency,
                p.target(),
                p.warm_pool,
                p.idle_ttl,
                p.routing,
                r.requests,
                r.failures,
                r.p99_ms,
                r.instance_seconds,
                r.peak_instances,
                mark,
            ]
        )
    return rows


def table(results: Sequence[Measured], best: Measured | None, base: Measured | None = None) -> str:
    return render(TABLE_HEADERS, table_rows(results, best, base))


def failure_lines(results: Sequence[Measured]) -> list[str]:
    """Why each point's requests failed: a 404 is the load missing the app, not the pool."""
    lines = [f"failures at {r.point.label()}: {r.why()}" for r in results if r.failures]
    statuses = {k for r in results for k in r.reasons if k.isdigit() and k.startswith("4")}
    if statuses:
        lines.append(
            f"note: {', '.join(sorted(statuses))} answers come from the app: check the paths "
            "(--paths, --locustfile, --access-log) are ones it serves"
        )
    return lines


SAMPLE_S = 0.5  # the instance sampler's period
TIMELINE_MAX = 60  # numbers on one line; a longer run is shown at a coarser step


def timeline(r: Measured) -> str:
    """The pool following the load at a point: live instances over the run, e.g.
    "instances every 0.5 s: 0 0 2 4 4 3 1 0" (the peak of each step when coarser)."""
    counts = r.instances
    if not counts:
        return "instances: not sampled"
    step = max(1, math.ceil(len(counts) / TIMELINE_MAX))
    shown = [max(counts[i : i + step]) for i in range(0, len(counts), step)]
    return f"instances every {SAMPLE_S * step:g} s: " + " ".join(map(str, shown))


def paths_table(r: Measured) -> str:
    """Per path at the recommended point: what the load sent and how it went."""
    rows = [[name, n, f, p99] for name, n, f, p99 in r.paths]
    return render(["path", "requests", "failed", "p99 ms"], rows) if rows else "(no per-path stats)"


def config_problems(base: dict[str, Any], point: Point) -> str:
    """The proxy's own config parser on the merged config: "" if valid, else the problems."""
    doc = configs.merge(base, {"pool": point.pool()})
    try:
        parse(doc, "<tune>")
    except ConfigError as exc:
        return "invalid: " + "; ".join(str(p) for p in exc.problems)
    return ""


REPLAY_USERS = 50  # senders sharing the log's schedule (gevent greenlets: cheap)
LOAD = Path(LOCUSTFILE).parent


@dataclass(frozen=True)
class Load:
    """What locust runs for one point: its files, environment, and users when no shape."""

    files: tuple[Path, ...]
    env: dict[str, str]
    shape: str | None
    users: int | None = None
    run_time: float | None = None

    def describe(self) -> str:
        names = [f.name if f.parent == LOAD else str(f) for f in self.files]
        extra = {k: v for k, v in self.env.items() if k != "FORKPROXY_SHAPE_SECONDS"}
        return " ".join([*(f"{k}={v}" for k, v in sorted(extra.items())), "-f", ",".join(names)])


def load_for(args: argparse.Namespace, seconds: float) -> Load:
    """The load a point sends, from --locustfile / --paths / --access-log (else the demo's)."""
    env = {"FORKPROXY_SHAPE_SECONDS": f"{seconds:g}"}
    shape_only = LOAD / "shapefile.py"
    if getattr(args, "access_log", None):
        log = accesslog.read(args.access_log)
        scale = seconds / log.span if log.span > 0 else 1.0
        env |= {
            "FORKPROXY_ACCESS_LOG": str(Path(args.access_log).resolve()),
            "FORKPROXY_REPLAY_SCALE": f"{scale:.6g}",
        }
        files = (LOAD / "replayfile.py",)
        return Load(files, env, None, users=REPLAY_USERS, run_time=seconds)
    if getattr(args, "paths", None):
        env["FORKPROXY_PATHS"] = args.paths
        return Load((LOAD / "pathsfile.py", shape_only), env, args.shape)
    if getattr(args, "locustfile", None):
        return Load((Path(args.locustfile).resolve(), shape_only), env, args.shape)
    return Load((Path(LOCUSTFILE),), env, args.shape)


def _per_path(run: LocustRun) -> list[tuple[str, int, int, float]]:
    return [
        (n, run.count(name=n), run.count("Failure Count", n), run.p99_ms(n)) for n in run.names()
    ]


async def measure(
    base: dict[str, Any], point: Point, seconds: float, args: argparse.Namespace, work: Path, i: int
) -> Measured:
    # A user's config resolves relative paths from where they run tune; ours from the repo.
    cwd = Path.cwd() if args.config else REPO
    pool = {**base.get("pool", {}), **point.pool()}
    load = load_for(args, seconds)
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
            InstanceSampler(fp.admin, SAMPLE_S) as sampler,
        ):
            run = await run_locust(
                fp.url,
                work / f"locust-{i}",
                shape=load.shape,
                env=load.env,
                users=load.users,
                run_time=load.run_time,
                kill_after=seconds + 60,
                locustfiles=load.files,
            )
            await sampler.sample_once()  # close the last interval at the end of the load
    except (RuntimeError, TimeoutError, OSError) as e:
        return Measured(
            point, time.monotonic() - t0, 0, 0, math.nan, math.nan, 0, str(e).splitlines()[0]
        )
    error = "" if run.returncode == 0 else f"locust exit {run.returncode}"
    if error and run.output.strip():  # e.g. the user's locustfile does not import
        error += ": " + run.output.strip().splitlines()[-1][:200]
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
        reasons=dict(run.failure_reasons()),
        paths=_per_path(run),
        instances=[len(live(insts)) for _, insts in samples],
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
        "--target-concurrency",
        default="auto,70%",
        help='grid values: "auto", absolute, or %% of max (auto,70%%)',
    )
    p.add_argument("--warm-pool", default="0", help="grid values (0)")
    p.add_argument(
        "--idle-ttl", default="auto,2s", help='grid values: "auto" or durations (auto,2s)'
    )
    p.add_argument("--routing", default="pack,least_loaded", help="grid values (pack,least_loaded)")
    p.add_argument("--out", help="write the recommended [pool] snippet here (TOML)")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--locustfile", help="your locustfile: its users, driven by --shape (or its own shape)"
    )
    what.add_argument("--paths", help="comma list of GET paths of your app, e.g. /,/items?page=2")
    what.add_argument(
        "--access-log",
        help="a recorded access log (common/combined format): its GET/HEAD requests are "
        "replayed with their timing, scaled to each point's share of the budget",
    )


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
    # Each point runs a copy of the config from a temporary directory: a relative
    # backend.cwd is read against the user's file, as `forkproxy run` reads it.
    backend = doc.get("backend")
    if isinstance(backend, dict) and isinstance(backend.get("cwd"), str):
        backend["cwd"] = str((Path(path).resolve().parent / backend["cwd"]).resolve())
    return doc


def plan(budget: float, n: int) -> tuple[float, int]:
    """Seconds of load per point and how many points fit: split evenly, but never below
    MIN_RUN_S of load (then the tail of the grid is skipped)."""
    load_s = budget / n - OVERHEAD_S
    if load_s >= MIN_RUN_S:
        return load_s, n
    return MIN_RUN_S, max(1, int(budget // (MIN_RUN_S + OVERHEAD_S)))


def needs_baseline_run(valid: Sequence[Point]) -> bool:
    """Whether the defaults at some max_concurrency are missing from the grid: then the
    recommendation may need one more run to be compared, and the budget keeps a slot for it."""
    return any(Point.defaults(p.max_concurrency) not in valid for p in valid)


@dataclass
class Search:
    """What a tune run found: every measurement, the pick and the defaults it is compared with."""

    results: list[Measured]
    load_s: float  # seconds of load per point
    best: Measured | None = None
    baseline: Measured | None = None
    met: bool = False
    error: str = ""  # why nothing was picked
    skipped: list[Point] = field(default_factory=list)  # over budget
    runnable: int = 0  # grid points the proxy's config parser accepted


async def search(args: argparse.Namespace, base: dict[str, Any], points: list[Point]) -> Search:
    """Measure the grid within the budget; pick; measure the defaults beside the pick."""
    results: list[Measured] = []
    t_start = time.monotonic()
    # Invalid points cost no load-test time: the proxy would refuse to start anyway.
    valid: list[Point] = []
    for point in points:
        problem = config_problems(base, point)
        if problem:
            results.append(Measured(point, 0.0, 0, 0, math.nan, math.nan, 0, problem))
        else:
            valid.append(point)
    extra = int(needs_baseline_run(valid))
    load_s, slots = plan(args.budget - (time.monotonic() - t_start), max(1, len(valid)) + extra)
    found = Search(results, load_s, runnable=len(valid))
    runnable = max(1, slots - extra)
    expected = [load_s + OVERHEAD_S] * (min(runnable, len(valid)) + extra)
    with (
        tempfile.TemporaryDirectory(prefix="forkproxy-tune-") as work,
        Progress("tune", expected, unit="points") as progress,
    ):
        # The grid's share of the budget leaves the baseline's slot; the first point always runs.
        limit = (args.budget - extra * (load_s + OVERHEAD_S)) * 1.1
        for i, point in enumerate(valid):
            spent = time.monotonic() - t_start
            if i >= runnable or (i > 0 and spent + load_s + OVERHEAD_S > limit):
                found.skipped = valid[i:]
                break
            progress.start(i, point.label())
            results.append(await measure(base, point, load_s, args, Path(work), i))
        try:
            found.best, found.met = pick(results, args.p99, args.max_error_rate)
        except ValueError as e:
            found.error = str(e)
            return found
        found.baseline = baseline_of(results, found.best)
        if found.baseline is None:
            # Measured even when the grid ran over its share: the comparison is the point.
            point = Point.defaults(found.best.point.max_concurrency)
            progress.start(min(runnable, len(valid)), f"defaults: {point.label()}")
            problem = config_problems(base, point)
            found.baseline = (
                Measured(point, 0.0, 0, 0, math.nan, math.nan, 0, problem)
                if problem
                else await measure(base, point, load_s, args, Path(work), len(valid))
            )
            results.append(found.baseline)
    return found


async def run(args: argparse.Namespace, base: dict[str, Any], points: list[Point]) -> int:
    found = await search(args, base, points)
    if found.skipped:
        print(
            f"budget of {args.budget:g} s exhausted: skipped {len(found.skipped)} of "
            f"{found.runnable} "
            f"runnable grid points: {', '.join(str(p.pool()) for p in found.skipped)}",
            file=sys.stderr,
        )
    best, baseline = found.best, found.baseline
    if best is None:
        print(table(found.results, None))
        print(f"forkproxy tune: {found.error}", file=sys.stderr)
        return 1
    load = load_for(args, found.load_s)
    print(
        f"load: {load.describe()}, shape {load.shape or 'replay'}, "
        f"{found.load_s:.0f} s of load per point, p99 target {args.p99:g} ms"
    )
    print(table(found.results, best, baseline))
    for line in failure_lines(found.results):
        print(line)
    print(paths_table(best))
    print(f"recommended point, {timeline(best)}")
    print(versus(best, baseline))
    text = snippet(best, found.met, args, baseline)
    print()
    print(text, end="")
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text)
        print(f"wrote {args.out}", file=sys.stderr)
    if not found.met:
        print("no setting met the target; the snippet holds the best p99 seen", file=sys.stderr)
    return 0 if found.met else 1


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
        load_for(args, MIN_RUN_S)  # an unreadable log or locustfile fails here, not per point
        if args.locustfile and not Path(args.locustfile).is_file():
            raise ValueError(f"--locustfile {args.locustfile}: no such file")
    except (ValueError, OSError, tomllib.TOMLDecodeError) as e:
        print(f"forkproxy tune: {e}", file=sys.stderr)
        return 2
    if not points:
        print("forkproxy tune: the grid is empty", file=sys.stderr)
        return 2
    if args.budget <= 0:
        print("forkproxy tune: --budget must be > 0", file=sys.stderr)
        return 2
    if args.config and not (args.locustfile or args.paths or args.access_log):
        print(
            "forkproxy tune: no --locustfile, --paths or --access-log: sending the bundled "
            "demo's requests (/, /io, /cpu), which your app may answer 404",
            file=sys.stderr,
        )
    return asyncio.run(run(args, base, points))
