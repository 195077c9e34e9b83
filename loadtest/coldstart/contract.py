"""One contract for a backend's cold-start measurement and the one command line that runs it.

Each backend module defines a ColdStart subclass and an instance named BENCH: its name, the
series the shared benchmark runs (`series`), and what its own command adds (`measure`,
`add_options`, `summary`). `python -m loadtest coldstart NAME` is `main(BENCH, args)` for
all of them: a temporary work directory, the measurement, a table, a JSON report under
results/, exit status 2 when the backend cannot run here.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from forkproxy.loadtest.report.table import render
from forkproxy.loadtest.run.procs import REPO

# name -> module holding its BENCH, in the order the shared benchmark runs them
BACKENDS = {
    "process": "forkproxy.loadtest.coldstart.process",
    "docker": "forkproxy.loadtest.coldstart.docker",
    "vsphere": "forkproxy.loadtest.coldstart.vsphere",
    "swarm": "forkproxy.loadtest.coldstart.swarm",
}

# (row key, column header) of the table every command prints unless its backend says otherwise
COLUMNS = (
    ("path", "path"),
    ("n", "n"),
    ("failures", "fail"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("min_ms", "min"),
    ("max_ms", "max"),
)


@dataclass
class Result:
    """What a measurement found: one row a series (forkproxy.loadtest.coldstart.ROW_KEYS at
    least), the
    commands behind them, the series that could not run here and why. `details`: the
    command's further findings, written to its JSON report next to the rows; `ok` False
    makes the command exit 1."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


@dataclass(frozen=True)
class Command:
    """A backend's `python -m loadtest coldstart NAME`."""

    name: str
    help: str  # one line for `python -m loadtest coldstart --help`
    n: int  # the default --n
    n_help: str
    out: str  # the JSON report, under results/


class ColdStart(abc.ABC):
    """A backend's cold-start measurement."""

    command: ClassVar[Command]
    columns: ClassVar[Sequence[tuple[str, str]]] = COLUMNS
    uvloop: ClassVar[bool] = False  # the command's event loop: uvloop, else asyncio's

    @property
    def description(self) -> str | None:
        """The backend module's docstring: what it measures and how to run it."""
        return sys.modules[type(self).__module__].__doc__

    @abc.abstractmethod
    async def series(self, n: int, work: Path) -> Result:
        """The rows the shared benchmark reports, n samples each (`work`: configs, logs). An
        engine that is not there is a `skipped` entry and no rows, not an exception."""

    async def measure(self, args: argparse.Namespace, work: Path) -> Result:
        """What the backend's own command measures (its options in `args`)."""
        return await self.series(args.n, work)

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """The command's options beyond --n and --out (none unless the backend has some)."""
        return None

    def where(self) -> dict[str, str]:
        """What the report names as measured against (an image, an engine)."""
        return {}

    def table(self, result: Result) -> str:
        headers = [h for _, h in self.columns]
        return render(headers, [[r[k] for k, _ in self.columns] for r in result.rows])

    def summary(self, result: Result) -> list[str]:
        """Lines printed after the table."""
        return []


def load(name: str) -> ColdStart:
    """The BENCH of a backend's module (ModuleNotFoundError when it or what it needs is absent)."""
    bench: ColdStart = importlib.import_module(BACKENDS[name]).BENCH
    return bench


def add_arguments(bench: ColdStart, parser: argparse.ArgumentParser) -> None:
    c = bench.command
    parser.add_argument("--n", type=int, default=c.n, help=f"{c.n_help} (default {c.n})")
    parser.add_argument("--out", type=Path, default=REPO / "results" / c.out)
    bench.add_options(parser)


def provenance(n: int, command: str, **where: str) -> dict[str, Any]:
    """What a cold-start result was measured with and when (the machine is shared: its
    load at the end says how noisy the numbers are)."""
    return {
        "n": n,
        **where,
        "command": command,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=list) + "\n")


def main(bench: ColdStart, args: argparse.Namespace) -> int:
    if bench.uvloop:
        import uvloop

        return uvloop.run(main_async(bench, args))
    return asyncio.run(main_async(bench, args))


async def main_async(bench: ColdStart, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix=f"bench-{bench.command.name}-") as tmp:
        result = await bench.measure(args, Path(tmp))
    if not result.rows:
        why = "; ".join(f"{what}: {reason}" for what, reason in result.skipped)
        print(f"coldstart {bench.command.name}: {why or 'no rows'}", file=sys.stderr)
        return 2
    command = f"python -m loadtest coldstart {bench.command.name} --n {args.n}"
    report = {
        "rows": result.rows,
        "commands": result.commands,
        "skipped": result.skipped,
        **result.details,
        **provenance(args.n, command, **bench.where()),
    }
    await asyncio.to_thread(write_json, args.out, report)
    print("\n" + bench.table(result))
    for line in bench.summary(result):
        print(line)
    for what, why in result.skipped:
        print(f"skipped {what}: {why}")
    print(f"\nwrote {args.out}")
    return 0 if result.ok else 1
