"""Section 5, tune: `forkproxy tune` on the bundled example app (fork mode), as a user runs
it, over a grid of the keys the pool prices by itself ("auto") and the fixed values they
replace; its table, its recommendation, and that recommendation against the defaults at the
same max_concurrency, measured in the same run."""

from __future__ import annotations

import math

from forkproxy.loadtest import tune
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

SHAPE = "spike"
P99_MS = 250.0
# The defaults ("auto", pack) beside the fixed values they replaced: a 70 % target, a 60 s
# idle_ttl (the old default), least_loaded routing.
GRID = [
    "--max-concurrency",
    "4",
    "--target-concurrency",
    "auto,70%",
    "--idle-ttl",
    "auto,60s",
    "--routing",
    "pack,least_loaded",
]


async def run(ctx: BenchContext) -> Section:
    sec = Section("tune", "Tune: forkproxy tune's recommendation against the defaults")
    budget = ctx.pick(150.0, 40.0)
    argv = ["--shape", SHAPE, "--p99", f"{P99_MS:g}", "--budget", f"{budget:g}", *GRID]
    args = tune.parse_args(argv)
    say(f"  forkproxy tune {' '.join(argv)}")
    found = await tune.search(args, tune.load_base(None), tune.grid(args))
    sec.tables.append(
        Table(
            tune.TABLE_HEADERS,
            tune.table_rows(found.results, found.best, found.baseline),
            f"locust shape {SHAPE}, {found.load_s:.0f} s of load per point",
        )
    )
    sec.commands.append(f"forkproxy tune {' '.join(argv)}")
    if found.skipped:
        sec.notes.append(
            f"Over the budget: {len(found.skipped)} grid points not measured: "
            + ", ".join(str(p.pool()) for p in found.skipped)
        )
    if found.best is None:
        sec.fail("tune", found.error or "no recommendation")
        return sec
    line = tune.versus(found.best, found.baseline)
    sec.notes.append(
        f"Recommendation ({'meets' if found.met else 'does NOT meet'} p99 <= {P99_MS:g} ms, "
        f"the cheapest in instance-seconds that does): {found.best.point.pool()}; {line}. "
        "'defaults' is the pool with only max_concurrency set (target_concurrency and "
        'idle_ttl "auto", routing pack); 70 %, 60 s and least_loaded are the fixed values '
        "the defaults replaced. Each point is one short locust run on a shared 2-core box: "
        "read differences under ~20 % as noise."
    )
    base = found.baseline
    if base is not None and not math.isnan(base.instance_seconds):
        sec.headline = f"Tune (spike, p99 <= {P99_MS:g} ms): {line}."
    sec.data = {
        "recommended": found.best.point.pool(),
        "met": found.met,
        "versus_defaults": line,
    }
    return sec
