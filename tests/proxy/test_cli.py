"""The command line loads what its command needs: `run` never imports the bench tooling
(loadtest/), `tune` still offers all of tune's options."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# the CLI as `forkproxy run` loads it, up to the parsed arguments
RUN = """
import sys
import forkproxy.proxy.cli
forkproxy.proxy.cli._parser().parse_args(["run", "--listen", "127.0.0.1:0"])
loaded = sorted(m for m in sys.modules if m == "loadtest" or m.startswith("loadtest."))
assert not loaded, loaded
"""


def test_run_never_imports_loadtest() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", RUN], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_tune_help_lists_tunes_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forkproxy", "tune", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: forkproxy tune"), proc.stdout
    assert "--max-concurrency" in proc.stdout and "--p99" in proc.stdout


def test_tune_refuses_an_unknown_option_naming_itself() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forkproxy", "tune", "--bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "forkproxy tune: error: unrecognized arguments: --bogus" in proc.stderr
