"""What a benchmark section hands to the report: tables, notes, exact commands, plots, raw data.

Also the run context every section receives (quick mode, output dirs, a printer).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    title: str = ""


@dataclass
class Section:
    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # file names inside the output dir
    skipped: list[str] = field(default_factory=list)  # "what: reason" (tool/engine missing)
    failures: list[str] = field(default_factory=list)  # "what: error" (something broke)
    data: dict[str, Any] = field(default_factory=dict)
    headline: str = ""  # one computed sentence for the summary at the top of the report

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append(f"{what}: {reason}")
        say(f"  skipped: {what}: {reason}")

    def fail(self, what: str, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        lines = text.strip().splitlines() or [text]
        # First line says what failed; the last line of a log tail usually says why.
        short = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        self.failures.append(f"{what}: {short}")
        say(f"  FAILED: {what}: {text}")


@dataclass
class BenchContext:
    out: Path  # results.json, results.md, PNGs
    work: Path  # configs, logs, locust CSVs (temp)
    quick: bool
    install_tools: bool = True  # apt-get install wrk/nginx when missing and running as root

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def say(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
