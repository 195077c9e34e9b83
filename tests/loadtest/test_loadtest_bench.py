"""The benchmark command (--quick) and `forkproxy tune` end to end, on real processes.

wrk and nginx come from Debian; without them the comparison rows are skipped here unless
FORKPROXY_REQUIRE_BENCH_TOOLS=1 (then their absence is a failure).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from forkproxy.loadtest.run.procs import REPO

pytestmark = pytest.mark.slow
REQUIRE_TOOLS = os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") == "1"


def _have(binary: str) -> bool:
    return bool(shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"))


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    argv = [
        sys.executable,
        "-m",
        "forkproxy.loadtest",
        "bench",
        "--quick",
        "--no-docs",
        "--out",
        str(out),
        # manyapps boots 100 apps three times: its own test runs a small copy of it
        "--only",
        "datapath,coldstart,burst,elasticity,tune,memory",
    ]
    if not REQUIRE_TOOLS:
        argv.append("--no-install")
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=280)
    log = proc.stdout[-6000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def sections(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in results["sections"]}


@pytest.mark.timeout(300)
def test_quick_bench_writes_every_section(quick_bench: tuple[Path, dict[str, Any], str]) -> None:
    out, results, stdout = quick_bench
    secs = sections(results)
    assert list(secs) == ["datapath", "coldstart", "burst", "elasticity", "tune", "memory"]
    assert all(not s["failures"] for s in secs.values()), [s["failures"] for s in secs.values()]
    md = (out / "results.md").read_text()
    assert "| target | tool | req/s |" in md and "forkproxy run --config" in md

    dp = secs["datapath"]["data"]["results"]
    assert dp["direct"]["rps"] > 0 and dp["forkproxy"]["rps"] > 0
    assert dp["forkproxy"]["errors"] == 0

    cold = {r["path"]: r for r in secs["coldstart"]["data"]["rows"]}
    for mode in ("fork", "exec"):
        row = cold[f"client -> forkproxy -> new process ({mode})"]
        assert row["n"] == 5 and row["failures"] == 0, row
        assert row["distinct_instances"] == 5, row  # every request met a fresh instance

    burst = secs["burst"]["data"]
    assert burst["ok"] == burst["n"] == 50, burst
    assert 1 <= burst["instances_started"] <= burst["bound"], burst

    runs = secs["elasticity"]["data"]["runs"]
    assert [(r["backend"], r["trace"]) for r in runs] == [
        ("fork", "step"),
        ("fork", "spike"),
        ("static 12 (fork)", "step"),
        ("static 12 (fork)", "spike"),
    ]
    for el in runs:
        summary = {k: v for k, v in el.items() if k != "samples"}
        assert el["requests"] > 0 and el["errors"] == 0, summary
        assert el["instance_seconds"] > 0, summary
        assert el["lower_bound"] > 0  # sampled: no ordering guarantee vs used
        assert el["back_to_min_s"] is not None, summary  # scaled back in within the run
    for name in ("elasticity-step.png", "elasticity-spike.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000

    tuned = secs["tune"]
    (grid,) = tuned["tables"]
    marks = [row[-1] for row in grid["rows"]]
    # the defaults are a grid point: measured in the same run
    assert any("defaults" in str(m) for m in marks), grid
    assert tuned["data"]["recommended"]["max_concurrency"] == 4
    assert tuned["data"]["versus_defaults"].startswith("vs defaults (max_concurrency 4): ")

    mem = secs["memory"]["data"]["results"]
    assert mem["fork"]["instances"] == mem["exec"]["instances"] == 20, mem
    assert mem["fork"]["mean_pss_mib"] > 0 and mem["exec"]["mean_pss_mib"] > 0
    assert "forkproxy / direct" in stdout  # every figure is printed, not only written


@pytest.mark.timeout(300)
def test_quick_bench_compares_with_wrk_and_the_peers(
    quick_bench: tuple[Path, dict[str, Any], str],
) -> None:
    missing = [b for b in ("wrk", "nginx", "haproxy", "go") if not _have(b)]
    if missing and not REQUIRE_TOOLS:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install wrk nginx haproxy golang-go)"
        )
    _, results, stdout = quick_bench
    data = sections(results)["datapath"]["data"]
    for level in ("1", "32", "256"):
        dp = data["by_connections"][level]
        assert list(dp) == ["direct", "nginx", "haproxy", "go", "forkproxy"], level
        assert {r["tool"] for r in dp.values()} == {"wrk"}
        for name, r in dp.items():
            assert r["rps"] > 0 and r["errors"] == 0, (level, name, r)
            assert r["load1"] > 0, r  # every figure carries the box's load beside it
    assert set(data["added_p50_us"]) == {"nginx", "haproxy", "go", "forkproxy"}
    assert "forkproxy / nginx @256" in data["ratios"]
    assert "added p50 µs over direct" in stdout


@pytest.mark.timeout(200)
def test_tune_tiny_grid_writes_a_pool_snippet(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text(
        '[server]\nname = "tune-test"\n\n[pool]\nmax_instances = 8\n\n'
        '[backend]\ntype = "process"\nmode = "fork"\napp = "examples.app:create_app"\n'
    )
    out = tmp_path / "pool.toml"
    argv = [
        sys.executable,
        "-m",
        "forkproxy.loadtest",
        "tune",
        "--config",
        str(config),
        "--shape",
        "spike",
        "--p99",
        "5000",
        "--budget",
        "30",
        "--max-concurrency",
        "2,8",
        "--warm-pool",
        "0,99",
        "--idle-ttl",
        "1s",
        "--target-concurrency",
        "70%",
        "--routing",
        "pack",
        "--out",
        str(out),
    ]
    env = {
        **os.environ,
        "FORKPROXY_SPIKE_USERS": "6",
        "FORKPROXY_WAIT_MIN": "0.1",
        "FORKPROXY_WAIT_MAX": "0.3",
    }
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pool = tomllib.loads(out.read_text())["pool"]
    assert pool["max_concurrency"] in (2, 8) and pool["idle_ttl"] == "1s"
    assert "<- recommended" in proc.stdout
    # warm_pool 99 > max_instances 8: refused by the config parser, reported, not load-tested.
    assert proc.stdout.count("invalid: pool.warm_pool") == 2, proc.stdout
    assert "points," in proc.stderr  # the progress bar
    # Not in the grid, so the pool's defaults at the recommended max_concurrency ran once more.
    assert "<- defaults" in proc.stdout, proc.stdout
    vs = r"# vs defaults \(max_concurrency \d\): instance-seconds [\d.]+ -> [\d.]+"
    vs += r".*, p99 \d+ -> \d+ ms"
    assert re.search(vs, out.read_text()), out.read_text()


@pytest.mark.timeout(120)
def test_tune_skips_grid_points_beyond_the_budget(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "forkproxy.loadtest",
        "tune",
        "--shape",
        "step",
        "--p99",
        "5000",
        "--budget",
        "12",
        "--max-concurrency",
        "2,4,8",
        "--warm-pool",
        "0",
        "--idle-ttl",
        "1s",
        "--target-concurrency",
        "70%",
        "--routing",
        "pack",
    ]
    env = {**os.environ, "FORKPROXY_STEP_USERS": "2", "FORKPROXY_STEP_COUNT": "2"}
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=100, env=env)
    assert "budget of 12 s exhausted: skipped 2 of 3 runnable grid points" in proc.stderr, (
        proc.stderr
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[pool]" in proc.stdout
