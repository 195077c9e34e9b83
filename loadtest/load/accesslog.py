"""Recorded traffic for `forkproxy tune --access-log`: the requests of a common or combined
log (nginx, Apache, forkproxy's own access log), as offsets in seconds from the first one.

Only GET and HEAD are replayed: a log has no request bodies. No locust import here (the
replay locustfile and tune both read logs through this module)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# 127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a?b=1 HTTP/1.1" 200 2326 "ref" "agent"
_LINE = re.compile(r'\[(?P<time>[^\]]+)\]\s+"(?P<method>[A-Z]+) (?P<target>\S+)[^"]*"')
_TIME = "%d/%b/%Y:%H:%M:%S %z"
REPLAYED = ("GET", "HEAD")


@dataclass(frozen=True)
class Entry:
    offset: float  # seconds after the first request of the log
    method: str
    target: str  # path and query, as recorded

    @property
    def name(self) -> str:
        """The path without its query: how locust groups the statistics."""
        return self.target.partition("?")[0]


@dataclass(frozen=True)
class Log:
    entries: list[Entry]
    skipped: int  # lines that were not a replayable request (other methods, noise)

    @property
    def span(self) -> float:
        return self.entries[-1].offset if self.entries else 0.0


def parse(lines: list[str]) -> Log:
    stamped: list[tuple[datetime, str, str]] = []
    skipped = 0
    for line in lines:
        m = _LINE.search(line)
        if m is None or m["method"] not in REPLAYED or not m["target"].startswith("/"):
            skipped += bool(line.strip())
            continue
        try:
            when = datetime.strptime(m["time"], _TIME)
        except ValueError:
            skipped += 1
            continue
        stamped.append((when, m["method"], m["target"]))
    stamped.sort(key=lambda e: e[0])  # a log of several workers is only roughly ordered
    if not stamped:
        return Log([], skipped)
    t0 = stamped[0][0]
    entries = [Entry((t - t0).total_seconds(), method, target) for t, method, target in stamped]
    return Log(entries, skipped)


def read(path: str | Path) -> Log:
    with open(path, encoding="utf-8", errors="replace") as fh:
        log = parse(fh.readlines())
    if not log.entries:
        raise ValueError(f"{path}: no GET or HEAD request in common/combined log format")
    return log
