"""docs/BENCHMARKS.md shows commands as a reader would type them in a checkout: no
absolute path of the machine that generated it."""

from __future__ import annotations

from pathlib import Path

from forkproxy.loadtest.report.markdown import _scrub


def test_commands_are_printed_relative_to_the_repository() -> None:
    text = (
        "/work/main/.venv/bin/python -m loadtest coldstart process --n 30\n"
        'command = ["/work/main/.venv/bin/python", "-m", "examples.app"]\n'
        "GOMAXPROCS=1 /root/.cache/forkproxy-bench/goproxy-b8 -listen 127.0.0.1:1\n"
        "forkproxy run --config /tmp/bench-x1/cold.toml\n"
    )
    out = _scrub(text, "/tmp/bench-x1", repo=Path("/work/main"), home="/root")
    assert out == (
        ".venv/bin/python -m loadtest coldstart process --n 30\n"
        'command = [".venv/bin/python", "-m", "examples.app"]\n'
        "GOMAXPROCS=1 ~/.cache/forkproxy-bench/goproxy-b8 -listen 127.0.0.1:1\n"
        "forkproxy run --config $WORK/cold.toml\n"
    )
