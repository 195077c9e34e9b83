"""Fixed-concurrency HTTP load: wrk when installed (with a Lua summary as JSON), else aiohttp.

Both report the same fields so the benchmark tables do not care which tool measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from forkproxy.loadtest.report.stats import percentile

# wrk calls done() once at the end; latency values are in microseconds.
_WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON ", string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f, '
    .. '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout), "\\n")
end
"""


@dataclass(frozen=True)
class LoadResult:
    tool: str
    command: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    # The box's 1-minute load average when the run ended: other work competes for the CPU.
    load1: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_argv(url: str, connections: int, seconds: float, script: str) -> list[str]:
    # One thread: on a 2-core box a second wrk thread steals the CPU the servers need.
    return ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script, url]


def parse_wrk(stdout: str, command: str) -> LoadResult:
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON ") :])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{stdout[-2000:]}")
    kinds = ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
    errors = sum(d[k] for k in kinds)
    secs = d["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        command=command,
        requests=d["requests"],
        errors=errors,
        rps=(d["requests"] - errors) / secs if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        load1=os.getloadavg()[0],
    )


def _write_script() -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_WRK_LUA)
        return fh.name


async def run_wrk(url: str, connections: int, seconds: float) -> LoadResult:
    script = _write_script()
    try:
        argv = wrk_argv(url, connections, seconds, script)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        # The temp script path is noise in reports: name the script by what it does.
        command = (
            " ".join([*argv[:5], "summary.lua", url]) + " (summary.lua: loadtest/load/httpload.py)"
        )
        return parse_wrk(out.decode(errors="replace"), command)
    finally:
        os.unlink(script)


async def run_aiohttp(url: str, connections: int, seconds: float) -> LoadResult:
    """Closed-loop client: `connections` workers, each sends the next request when one returns."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=connections, force_close=False)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        errors += 1
                        continue
            except (aiohttp.ClientError, OSError, TimeoutError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.monotonic()
    async with (
        aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s,
        asyncio.TaskGroup() as tg,
    ):
        for _ in range(connections):
            tg.create_task(worker(s))
    elapsed = time.monotonic() - start
    return LoadResult(
        tool="aiohttp",
        command=f"aiohttp closed loop: {connections} connections, {seconds:g}s, GET {url}",
        requests=len(latencies) + errors,
        errors=errors,
        rps=len(latencies) / elapsed if elapsed else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        load1=os.getloadavg()[0],
    )


async def run_load(url: str, connections: int, seconds: float, use_wrk: bool) -> LoadResult:
    if use_wrk and wrk_path():
        return await run_wrk(url, connections, seconds)
    return await run_aiohttp(url, connections, seconds)
