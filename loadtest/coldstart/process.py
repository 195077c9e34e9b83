"""Cold start of the process backend, fork vs exec of examples.app: time from
`backend.start()` to the first response byte of `GET /` on the new instance.

    .venv/bin/python -m loadtest coldstart process --n 30

Exec includes the readiness wait (connect every 5 ms until the app answers). Prints a
table, writes results/process_coldstart.json; the same series feed the shared bench.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from forkproxy.backends.base import Backend, BackendContext, Instance
from forkproxy.backends.process import create_backend, parse_config
from forkproxy.backends.support.table import Table
from forkproxy.loadtest.coldstart import start_row
from forkproxy.loadtest.coldstart.contract import COLUMNS, ColdStart, Command, Result
from forkproxy.loadtest.report.stats import percentile
from forkproxy.loadtest.run.procs import REPO

POLL = 0.005
DEADLINE = 30.0
GAP = 0.1  # idle time between cold starts, as between real ones (lets spares refill)
APP = "examples.app:create_app"
MODES: dict[str, dict[str, Any]] = {
    "fork": {"mode": "fork", "app": APP, "prefork": 1},
    "fork-prefork0": {"mode": "fork", "app": APP, "prefork": 0},
    "exec": {"mode": "exec", "command": [sys.executable, "-m", "examples.app", "--port", "{port}"]},
}
LABELS = {
    "fork": "fork, prefork=1 (a spare fork is waiting)",
    "fork-prefork0": "fork, prefork=0 (fork on start)",
    "exec": "exec (new python process + readiness polling every 5 ms)",
}


async def first_byte(inst: Instance, deadline: float) -> tuple[float, bytes]:
    """(monotonic time of the first response byte, the whole response) for GET /."""
    request = f"GET / HTTP/1.1\r\nHost: {inst.endpoint.host}\r\nConnection: close\r\n\r\n"
    while True:
        try:
            reader, writer = await asyncio.open_connection(inst.endpoint.host, inst.endpoint.port)
        except OSError:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{inst.id} never accepted a connection") from None
            await asyncio.sleep(POLL)
            continue
        try:
            writer.write(request.encode())
            first = await reader.read(1)
            t = time.perf_counter()
            if first:
                return t, first + await reader.read()
        except OSError:
            pass
        finally:
            writer.close()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{inst.id} never answered")
        await asyncio.sleep(POLL)


async def series(mode: str, n: int) -> dict[str, Any]:
    table = Table({"cwd": str(REPO), **MODES[mode]}, "backend")
    config = parse_config(table)
    if table.problems:
        raise ValueError(table.problems)
    ctx = BackendContext(f"bench-coldstart-{uuid.uuid4().hex[:6]}", "bench")
    backend: Backend = create_backend(config, ctx)
    ttfb: list[float] = []
    start_call: list[float] = []
    ids: set[str] = set()
    failures = spares = 0
    try:
        t_prepare = time.perf_counter()
        await backend.prepare()
        prepare_s = time.perf_counter() - t_prepare
        for i in range(n):
            await asyncio.sleep(GAP)
            t0 = time.perf_counter()
            try:
                inst = await backend.start(f"{mode}-{i}")
                t1 = time.perf_counter()
                t2, response = await first_byte(inst, t0 + DEADLINE)
            except Exception as exc:
                print(f"{mode} #{i}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failures += 1
                continue
            if b" 200 " not in response.split(b"\r\n", 1)[0]:
                failures += 1
            elif f"hello from instance {inst.id}".encode() in response:
                ids.add(inst.id)  # answered by the instance we just started
            spares += inst.meta.get("prefork") == "spare"
            ttfb.append(t2 - t0)
            start_call.append(t1 - t0)
            await backend.stop(inst, "bench")
    finally:
        await backend.aclose()
    path = f"process backend, {LABELS[mode]}: start() -> first byte of GET /"
    return {
        **start_row(path, ttfb, failures, len(ids)),
        "mode": mode,
        "start_call_p50_ms": percentile(start_call, 50) * 1000,
        "prepare_ms": prepare_s * 1000,
        "served_by_spare": spares,
    }


class Process(ColdStart):
    command = Command(
        "process",
        "process backend, fork vs exec: start() to first byte",
        30,
        "cold starts per mode",
        "process_coldstart.json",
    )
    columns = (
        ("mode", "mode"),
        *COLUMNS[1:],
        ("start_call_p50_ms", "start() p50"),
        ("served_by_spare", "spare"),
    )
    uvloop = True

    async def series(self, n: int, work: Path) -> Result:
        rows = [await series(mode, n) for mode in MODES]
        return Result(rows, [f"{sys.executable} -m loadtest coldstart process --n {n}"])

    async def measure(self, args: argparse.Namespace, work: Path) -> Result:
        load_before = os.getloadavg()[0]
        result = await self.series(args.n, work)
        by = {r["mode"]: r for r in result.rows}
        fork, fork0, exec_ = by["fork"], by["fork-prefork0"], by["exec"]
        ratio = exec_["p50_ms"] / fork["p50_ms"] if fork["p50_ms"] > 0 else math.nan
        ratio0 = exec_["p50_ms"] / fork0["p50_ms"] if fork0["p50_ms"] > 0 else math.nan
        result.details = {
            "gap_between_starts_s": GAP,
            "ratio_exec_over_fork_p50": ratio,
            "ratio_exec_over_fork_prefork0_p50": ratio0,
            "target": {"fork_p50_ms_below": 5.0, "ratio_at_least": 20.0},
            "met": fork["p50_ms"] < 5.0 and ratio >= 20.0,
            "loadavg_1m_before_after": [load_before, os.getloadavg()[0]],
        }
        return result

    def summary(self, result: Result) -> list[str]:
        d = result.details
        return [
            f"exec/fork p50: {d['ratio_exec_over_fork_p50']:.1f}x (prefork=1), "
            f"{d['ratio_exec_over_fork_prefork0_p50']:.1f}x (prefork=0); target fork p50 "
            f"< 5 ms and >= 20x: {'met' if d['met'] else 'NOT met'}; "
            f"load avg {d['loadavg_1m_before_after'][0]:.1f} on {os.cpu_count()} CPUs"
        ]


BENCH = Process()
