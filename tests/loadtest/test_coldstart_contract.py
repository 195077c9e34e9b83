"""The cold-start contract: every backend's command line parses, runs through the one entry
point (a real process-backend run; the engine backends, with no engine here, exit 2 saying
why), the shared benchmark takes every backend through the same contract, and the vSphere
simulator's helpers stay out of the wheel."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from forkproxy.loadtest.__main__ import build_parser
from forkproxy.loadtest.coldstart import ROW_KEYS, add_proxied, engine, start_row
from forkproxy.loadtest.coldstart.contract import (
    BACKENDS,
    ColdStart,
    Command,
    Result,
    load,
    main_async,
)
from forkproxy.loadtest.run.procs import REPO, free_port
from forkproxy.loadtest.sections.coldstart import run_all
from forkproxy.loadtest.sections.model import BenchContext, Section

OUTS = {
    "process": "process_coldstart.json",
    "docker": "docker_bench.json",
    "vsphere": "vsphere_bench.json",
    "swarm": "swarm_bench.json",
}


@pytest.mark.parametrize(
    ("backend", "extra", "n"),
    [
        ("process", [], 30),
        ("docker", ["--no-burst"], 30),
        ("vsphere", ["--delays", "0,500"], 10),
        ("swarm", [], 10),
    ],
)
def test_every_backend_parses_its_command_line(backend: str, extra: list[str], n: int) -> None:
    args = build_parser().parse_args(["coldstart", backend, *extra])
    assert args.n == n and args.out == REPO / "results" / OUTS[backend]
    assert callable(args.main)
    if backend == "docker":
        assert args.no_burst
    if backend == "vsphere":
        assert args.delays == "0,500"
    assert load(backend).command.name == backend


def test_the_registry_names_every_backend_module() -> None:
    assert list(BACKENDS) == ["process", "docker", "vsphere", "swarm"]
    assert {name: load(name).command.out for name in BACKENDS} == OUTS


def _coldstart(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forkproxy.loadtest", "coldstart", *argv],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=100,
    )


@pytest.mark.parametrize("backend", ["docker", "swarm"])
def test_no_engine_exits_2_and_says_why(backend: str, tmp_path: Path) -> None:
    closed = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "bench.json"
    proc = _coldstart([backend, "--n", "1", "--out", str(out)], {"DOCKER_HOST": closed})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"no Docker engine at {closed}" in proc.stderr and f".ci/{backend}.sh" in proc.stderr
    assert not out.exists()


def test_no_simulator_exits_2_and_says_why(tmp_path: Path) -> None:
    env = {"FORKPROXY_VCSIM_ENV": str(tmp_path / "none.env")}
    env.update({k: "" for k in os.environ if k.startswith("FORKPROXY_VCSIM_") and k not in env})
    proc = _coldstart(["vsphere", "--n", "1", "--out", str(tmp_path / "v.json")], env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no simulator" in proc.stderr and ".ci/vcsim.sh" in proc.stderr


@pytest.mark.timeout(100)
def test_process_command_measures_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "process.json"
    proc = _coldstart(["process", "--n", "2", "--out", str(out)], {})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["rows"]] == ["fork", "fork-prefork0", "exec"]
    for row in report["rows"]:
        assert set(ROW_KEYS) <= set(row) and row["n"] + row["failures"] == 2, row
    assert {"ratio_exec_over_fork_p50", "met", "target", "command", "cpus", "at"} <= set(report)
    assert report["command"] == "python -m loadtest coldstart process --n 2"
    assert "exec/fork p50:" in proc.stdout and f"wrote {out}" in proc.stdout


@pytest.mark.timeout(100)
async def test_run_all_takes_every_backend_through_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "ENGINE", f"tcp://127.0.0.1:{free_port()}")
    for key in [k for k in os.environ if k.startswith("FORKPROXY_VCSIM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("FORKPROXY_VCSIM_ENV", str(tmp_path / "none.env"))
    sec = Section("coldstart", "t")
    ctx = BenchContext(out=tmp_path, work=tmp_path / "work", quick=True)
    rows = await run_all(ctx, sec, 1)
    assert [r["mode"] for r in rows] == ["fork", "fork-prefork0", "exec"]
    assert any("-m loadtest coldstart process --n 1" in c for c in sec.commands)
    skipped = {s.split(":")[0] for s in sec.skipped}
    assert skipped == {"docker backend", "vsphere backend", "swarm backend"}, sec.skipped
    assert not sec.failures


def test_the_simulator_helpers_stay_out_of_the_wheel() -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_packages(str(REPO), **find["packages"]["find"])
    assert "forkproxy.loadtest.coldstart" in packages and "forkproxy.loadtest.run" in packages
    assert "forkproxy.loadtest.vcsim" not in packages


class _Fixed(ColdStart):
    """A measurement with known rows: the shared command's own logic, without a backend."""

    command = Command("fixed", "a fixed result", 3, "samples", "fixed.json")

    def __init__(self, result: Result) -> None:
        self.result = result

    async def series(self, n: int, work: Path) -> Result:
        assert work.name.startswith("bench-fixed-")  # the command's own temporary directory
        return self.result

    def summary(self, result: Result) -> list[str]:
        return [f"summary of {len(result.rows)}"]


async def test_the_command_writes_rows_details_and_provenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = start_row("fixed path", [0.001, 0.002], 1, 2)
    bench = _Fixed(Result([row], ["cmd"], [("a series", "no engine")], {"extra": 1}, ok=False))
    out = tmp_path / "r" / "fixed.json"
    status = await main_async(bench, argparse.Namespace(n=2, out=out))
    assert status == 1  # ok=False: the backend's own check failed
    report = json.loads(out.read_text())
    assert report["rows"] == [row] and report["extra"] == 1 and report["commands"] == ["cmd"]
    assert report["skipped"] == [["a series", "no engine"]]
    assert report["command"] == "python -m loadtest coldstart fixed --n 2" and report["n"] == 2
    printed = capsys.readouterr().out
    assert "fixed path" in printed and "summary of 1" in printed
    assert "skipped a series: no engine" in printed


async def test_no_rows_is_status_2_with_every_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _Fixed(Result(skipped=[("x backend", "no engine"), ("y", "no image")]))
    out = tmp_path / "fixed.json"
    assert await main_async(bench, argparse.Namespace(n=2, out=out)) == 2
    assert "coldstart fixed: x backend: no engine; y: no image" in capsys.readouterr().err
    assert not out.exists()


async def test_proxied_series_are_rows_until_one_fails() -> None:
    called: list[int] = []

    async def series(key: int) -> tuple[list[float], int, str]:
        called.append(key)
        if key == 2:
            raise OSError("the proxy did not start\nits log tail")
        return [0.01, 0.02], 1, f"command {key}"

    result = Result()
    await add_proxied(result, "x", {1: "one", 2: "two", 3: "three"}, series)
    assert called == [1, 2]
    assert [r["path"] for r in result.rows] == ["client -> forkproxy -> x one"]
    assert result.rows[0]["n"] == 2 and result.rows[0]["failures"] == 1
    assert result.commands == ["command 1"]
    assert result.skipped == [("through forkproxy, x", "the proxy did not start")]


async def test_without_the_simulator_helpers_the_vsphere_bench_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As installed from the wheel, which leaves forkproxy.loadtest.vcsim out:
    `from forkproxy.loadtest import vcsim` then raises a plain ImportError."""
    from forkproxy import loadtest
    from forkproxy.loadtest.coldstart import vsphere

    monkeypatch.delattr(loadtest, "vcsim", raising=False)
    monkeypatch.delitem(sys.modules, "forkproxy.loadtest.vcsim", raising=False)
    monkeypatch.setattr(loadtest, "__path__", [str(tmp_path)])  # a package without it
    # the editable install's finder maps forkproxy.* to this checkout: not in a wheel install
    finders = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    monkeypatch.setattr(sys, "meta_path", finders)
    with pytest.raises(ImportError) as err:
        from forkproxy.loadtest import vcsim  # noqa: F401
    assert type(err.value) is ImportError
    result = await vsphere.BENCH.series(1, Path("unused"))
    assert result.rows == []
    assert result.skipped == [("vsphere backend", "the vcsim harness is in a checkout only")]
