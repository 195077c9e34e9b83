"""Run loadtest/load/locustfile.py headless in a subprocess and read back its CSV statistics.

Locust monkey-patches with gevent on import, so the bench and tests only ever exec it.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import re
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forkproxy.loadtest.run.procs import PYTHON, REPO

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class LocustRun:
    command: str
    returncode: int
    stats: dict[str, dict[str, str]]  # Name -> row of <prefix>_stats.csv ("Aggregated" included)
    history: list[dict[str, str]] = field(default_factory=list)  # aggregated rows, ~1 per second
    output: str = ""
    # Final totals from --json-file, written at shutdown; the stats CSV is rewritten only once a
    # second, so it can miss the last requests. Name -> (requests, failures, p99 ms).
    final: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    # <prefix>_failures.csv: (name, error) -> occurrences
    failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def failure_reasons(self) -> Counter[str]:
        """Why requests failed: "404" for a status, else the error's type ("ConnectionError")."""
        out: Counter[str] = Counter()
        for (_name, error), n in self.failures.items():
            out[reason(error)] += n
        return out

    def names(self) -> list[str]:
        """The request names (paths) this run sent, as locust grouped them."""
        return sorted(n for n in self.final if n != "Aggregated") or sorted(
            n for n in self.stats if n != "Aggregated"
        )

    @property
    def total(self) -> dict[str, str]:
        return self.stats.get("Aggregated", {})

    def count(self, key: str = "Request Count", name: str = "Aggregated") -> int:
        if name in self.final and key in ("Request Count", "Failure Count"):
            requests, failures, _ = self.final[name]
            return requests if key == "Request Count" else failures
        return int(self.stats.get(name, {}).get(key, "0") or 0)

    def p99_ms(self, name: str = "Aggregated") -> float:
        if name in self.final:
            return self.final[name][2]
        return _float(self.stats.get(name, {}).get("99%", ""))

    def series(self) -> list[dict[str, Any]]:
        """History as numbers: ts (epoch s), t (s since first row), users, rps, fails_per_s,
        p99_ms. Rates come from the cumulative counts (locust's own Requests/s column freezes
        when requests stop); p99 is locust's sliding-window value, NaN when nothing completed."""
        rows: list[dict[str, Any]] = []
        prev: tuple[float, float, float] | None = None
        for r in self.history:
            ts = _float(r.get("Timestamp", ""))
            total = _float(r.get("Total Request Count", ""))
            fails = _float(r.get("Total Failure Count", ""))
            if math.isnan(ts) or math.isnan(total):
                continue
            if prev is None:
                rps = fps = 0.0
            else:
                dt = max(ts - prev[0], 1e-9)
                rps, fps = (total - prev[1]) / dt, (fails - prev[2]) / dt
            p99 = _float(r.get("99%", "")) if rps > 0 else math.nan
            rows.append(
                {
                    "ts": ts,
                    "t": ts - rows[0]["ts"] if rows else 0.0,
                    "users": _float(r.get("User Count", "")),
                    "rps": rps,
                    "fails_per_s": fps,
                    "p99_ms": p99,
                }
            )
            prev = (ts, total, fails)
        return rows


# requests' "404 Client Error: ..." and locust FastHttpUser's "... code=404"
_STATUS = re.compile(r"\b([1-5]\d\d) (?:Client|Server) Error|code=([1-5]\d\d)\b")


def reason(error: str) -> str:
    m = _STATUS.search(error)
    if m:
        return m.group(1) or m.group(2)
    return error.partition("(")[0].strip() or "error"


def read_failures(prefix: Path) -> dict[tuple[str, str], int]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return {}
    out: dict[tuple[str, str], int] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            key = (row.get("Name", ""), row.get("Error", ""))
            out[key] = out.get(key, 0) + int(row.get("Occurrences", "0") or 0)
    return out


def _float(s: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan  # locust writes "N/A" before the first response


def read_stats(prefix: Path) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    stats: dict[str, dict[str, str]] = {}
    history: list[dict[str, str]] = []
    stats_path = Path(f"{prefix}_stats.csv")
    if stats_path.exists():
        with stats_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                stats[row["Name"]] = row
    hist_path = Path(f"{prefix}_stats_history.csv")
    if hist_path.exists():
        with hist_path.open(newline="") as fh:
            history = [r for r in csv.DictReader(fh) if r.get("Name") == "Aggregated"]
    return stats, history


def _p99(times: dict[float, int]) -> float:
    total = sum(times.values())
    if not total:
        return math.nan
    seen = 0
    for ms in sorted(times):
        seen += times[ms]
        if seen >= 0.99 * total:
            return ms
    return max(times)


def read_final(path: Path) -> dict[str, tuple[int, int, float]]:
    """Per-name and "Aggregated" (requests, failures, p99 ms) from locust's --json-file."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, tuple[int, int, float]] = {}
    merged: dict[float, int] = {}
    reqs = fails = 0
    for e in entries:
        times = {float(k): int(v) for k, v in (e.get("response_times") or {}).items()}
        for k, v in times.items():
            merged[k] = merged.get(k, 0) + v
        n, f = int(e.get("num_requests", 0)), int(e.get("num_failures", 0))
        reqs, fails = reqs + n, fails + f
        name = str(e.get("name", ""))
        prev = out.get(name)  # the same name under two methods: add them up
        out[name] = (n + (prev[0] if prev else 0), f + (prev[1] if prev else 0), _p99(times))
    out["Aggregated"] = (reqs, fails, _p99(merged))
    return out


def locust_argv(
    host: str,
    csv_prefix: Path,
    run_time: float | None,
    users: int | None,
    locustfiles: Sequence[Path] = (LOCUSTFILE,),
) -> list[str]:
    files = ",".join(str(f) for f in locustfiles)
    argv = [PYTHON, "-m", "locust", "-f", files, "--headless", "--host", host]
    argv += ["--csv", str(csv_prefix), "--csv-full-history", "--only-summary"]
    argv += ["--json-file", str(csv_prefix)]  # locust appends ".json"
    argv += ["--loglevel", "WARNING", "--exit-code-on-error", "0"]
    if users is not None:
        argv += ["-u", str(users), "-r", str(max(1, users))]
    if run_time is not None:
        argv += ["-t", f"{max(1, math.ceil(run_time))}s", "--stop-timeout", "5"]
    return argv


async def run_locust(
    host: str,
    csv_prefix: Path,
    *,
    shape: str | None = None,
    env: Mapping[str, str] | None = None,
    run_time: float | None = None,
    users: int | None = None,
    kill_after: float = 600.0,
    locustfiles: Sequence[Path] = (LOCUSTFILE,),
) -> LocustRun:
    """Run one headless test. With a shape, the shape decides users and duration."""
    await asyncio.to_thread(csv_prefix.parent.mkdir, parents=True, exist_ok=True)
    argv = locust_argv(host, csv_prefix, run_time, users, locustfiles)
    full_env = {**os.environ, **(env or {}), "FORKPROXY_SHAPE": shape or "none"}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=full_env,
        cwd=str(REPO),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), kill_after)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    stats, history = await asyncio.to_thread(read_stats, csv_prefix)
    final = await asyncio.to_thread(read_final, Path(f"{csv_prefix}.json"))
    failures = await asyncio.to_thread(read_failures, csv_prefix)
    shown_env = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in sorted({**(env or {}), "FORKPROXY_SHAPE": shape or "none"}.items())
    )
    command = f"{shown_env} locust " + shlex.join(argv[3:])
    return LocustRun(
        command=command,
        returncode=proc.returncode if proc.returncode is not None else -1,
        stats=stats,
        history=history,
        output=out.decode(errors="replace"),
        final=final,
        failures=failures,
    )
