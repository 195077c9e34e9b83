"""The many-apps section end to end, small: 6 generated apps (aiohttp, Flask, Django), a
few seconds of trace, each variant on real processes (gunicorn per app, forkproxy in
fork mode), memory sampled from /proc. It must produce its rows and plots with 0 errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import psutil
import pytest

from forkproxy.loadtest.sections import manyapps
from forkproxy.loadtest.sections.model import BenchContext

pytestmark = pytest.mark.slow


def _leftovers(work: Path) -> list[str]:
    """Processes of this run still alive (an app module or its config on the command line)."""
    left = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if str(work) in line or ("_main:" in line and "gunicorn" in line and p.ppid() == 1):
            left.append(line)
    return left


@pytest.mark.timeout(400)
async def test_small_run_has_its_rows_and_no_errors(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ctx = BenchContext(out=tmp_path, work=work, quick=True)
    sec = await manyapps.run_apps(ctx, 6, 8.0, seed=5)
    assert sec.failures == []
    results = sec.data["results"]
    assert list(results) == list(manyapps.VARIANTS)
    requests = len(manyapps.make_trace(6, 8.0, seed=5).arrivals)
    for variant, r in results.items():
        assert r["requests"] == requests > 0, variant
        assert r["errors"] == 0, (variant, r["error_examples"])
        assert r["memory_gib_s"] > 0 and r["peak_mib"] > 0, variant
        assert len(r["memory"]) >= 4, variant  # sampled about every second
        assert not math.isnan(r["hot_p50_ms"]), variant
        assert r["idle_warm"] + r["idle_cold"] == r["idle_requests"] > 0, variant
    assert results["always-on"]["starts"] == 0  # up before the load, never restarted
    assert results["always-on"]["idle_cold"] == 0
    # the defaults start an instance for an app's first request (none is kept before it)
    assert results["defaults"]["idle_cold"] >= 1
    # every always-on app is a gunicorn master and its worker, besides the proxy
    assert results["always-on"]["peak_processes"] >= 1 + 2 * 6
    main, ratios = sec.tables[1], sec.tables[2]
    assert len(main.rows) == len(ratios.rows) == 3
    assert ratios.rows[0][1] == pytest.approx(1.0)  # always-on / always-on
    assert sec.plots == [f"manyapps-{v}.png" for v in manyapps.VARIANTS]
    for p in sec.plots:
        assert (tmp_path / p).stat().st_size > 1000
    assert sec.headline.startswith("Many apps (6 apps")
    assert _leftovers(work) == [], "a variant left processes behind"
    assert os.listdir(work / "manyapps")  # the apps were generated into the work dir
