"""The locust shapes and locustfile, run in subprocesses (locust monkey-patches with gevent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkproxy.loadtest.load.locustrun import run_locust
from forkproxy.loadtest.run.procs import REPO

# Drive each LoadTestShape's tick() with a fake clock inside a locust-importing subprocess.
_TICKS = """
import json, sys
from forkproxy.loadtest.load import shapes
out = {}
for name, cls in shapes.SHAPES.items():
    shape = cls()
    ticks = []
    for t in [0.0, 1.0, 2.5, 4.0, 5.5, 7.0, 8.9, 9.0, 30.0]:
        shape.get_run_time = lambda t=t: t
        ticks.append(shape.tick())
    out[name] = ticks
print(json.dumps(out))
"""


def test_shape_classes_tick_as_configured() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FORKPROXY_SHAPE_SECONDS": "9",
        "FORKPROXY_STEP_USERS": "4",
        "FORKPROXY_STEP_COUNT": "3",
        "FORKPROXY_SPIKE_USERS": "30",
        "FORKPROXY_SPIKE_IDLE": "2",
        "FORKPROXY_SPIKE_BURST": "3",
        "FORKPROXY_SPIKE_AFTER": "4",
        "FORKPROXY_SINE_MIN": "0",
        "FORKPROXY_SINE_MAX": "10",
        "FORKPROXY_SPAWN_RATE": "50",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _TICKS], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    ticks = json.loads(proc.stdout.strip().splitlines()[-1])
    users = {k: [None if x is None else x[0] for x in v] for k, v in ticks.items()}
    # t:                 0  1  2.5 4  5.5 7  8.9   9     30
    assert users["step"] == [4, 4, 4, 8, 8, 12, 12, None, None]
    assert users["spike"] == [0, 0, 30, 30, 0, 0, 0, None, None]
    assert users["sine"][0] == 0 and users["sine"][5] is not None
    assert users["sine"][3] == 10 or users["sine"][4] == 10  # noon sits at t = 4.5
    assert all(x[1] == 50 for v in ticks.values() for x in v if x is not None)


@pytest.mark.slow
async def test_locustfile_serves_requests_without_shape(app_url: str, tmp_path: Path) -> None:
    fast = {"FORKPROXY_WAIT_MIN": "0.05", "FORKPROXY_WAIT_MAX": "0.2"}
    run = await run_locust(app_url, tmp_path / "plain", users=5, run_time=3, env=fast)
    assert run.returncode == 0, run.output
    assert run.count() > 0, run.output
    assert int(run.stats["Aggregated"]["Request Count"]) > 0, run.stats  # the CSV stats too
    assert run.count("Failure Count") == 0, run.output
    for name in ("/", "/io", "/cpu"):
        assert run.count(name=name) > 0, f"{name} never requested:\n{run.output}"


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["step", "spike", "sine"])
async def test_each_shape_runs_headless(app_url: str, tmp_path: Path, shape: str) -> None:
    env = {
        "FORKPROXY_SHAPE_SECONDS": "4",
        "FORKPROXY_SPIKE_IDLE": "0.5",
        "FORKPROXY_SPIKE_BURST": "2",
        "FORKPROXY_SPIKE_AFTER": "1.5",
        "FORKPROXY_SPIKE_USERS": "8",
        "FORKPROXY_STEP_USERS": "2",
        "FORKPROXY_STEP_COUNT": "2",
        "FORKPROXY_SINE_MAX": "6",
        "FORKPROXY_WAIT_MIN": "0.1",
        "FORKPROXY_WAIT_MAX": "0.3",
    }
    run = await run_locust(app_url, tmp_path / shape, shape=shape, env=env, kill_after=60)
    assert run.returncode == 0, run.output
    assert run.count() > 0, run.output
    assert int(run.stats["Aggregated"]["Request Count"]) > 0, run.stats  # the CSV stats too
    assert run.count("Failure Count") == 0, run.output
    peak = max((row["users"] for row in run.series()), default=0)
    assert peak >= 2, f"the {shape} shape never spawned users: {run.history}"
