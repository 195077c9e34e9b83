"""The floor under a fork cold start: what `os.fork()` of a process holding what the fork
template holds (the app built, aiohttp, uvloop and the child's serving code imported, the heap
frozen) costs on this machine, with the child `_exit(0)`ing at once and the parent reaping it.

    python -m loadtest.coldstart.forkfloor examples.app:create_app 200

prints one JSON object: p50/p99 of the fork() call as the parent sees it, of the whole
fork + exit + waitpid cycle, and the process's RSS and page-table size (VmPTE: what fork
copies). `measure()` runs it in a fresh interpreter for the bench.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from loadtest.report.stats import percentile


def _status(field: str) -> int:
    """A `kB` field of /proc/self/status (0 where absent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def probe(app: str, n: int) -> dict[str, Any]:
    from backends.process import _apps, _serve  # noqa: F401 - held like the template holds it

    kind, built = _apps.load(app, "auto")
    if kind == "aiohttp":
        built.freeze()
    import uvloop  # noqa: F401

    gc.collect()
    gc.freeze()
    call: list[float] = []
    cycle: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        t1 = time.perf_counter()
        os.waitpid(pid, 0)
        t2 = time.perf_counter()
        call.append(t1 - t0)
        cycle.append(t2 - t0)
    return {
        "app": app,
        "n": n,
        "fork_call_p50_ms": percentile(call, 50) * 1000,
        "fork_call_p99_ms": percentile(call, 99) * 1000,
        "cycle_p50_ms": percentile(cycle, 50) * 1000,
        "cycle_p99_ms": percentile(cycle, 99) * 1000,
        "rss_mib": _status("VmRSS") / 1024,
        "page_tables_kib": _status("VmPTE"),
        "loadavg_1m": os.getloadavg()[0],
    }


async def measure(app: str, n: int, cwd: str) -> dict[str, Any]:
    """probe() in a fresh interpreter (the bench's own process holds far more than a template)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.coldstart.forkfloor",
        app,
        str(n),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": cwd},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        raise RuntimeError(f"fork floor probe failed: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out)
    return result


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], int(sys.argv[2]))))
