"""The floor under a fork cold start: what `os.fork()` of a process holding what the fork
template holds (the app built, aiohttp, uvloop and the child's serving code imported and
primed, the heap frozen) costs on this machine, with the child `_exit(0)`ing at once and the
parent reaping it; and what a fork running the backend's own child code (the same code a
template's fork runs, minus the template's messaging) takes from fork() to the first byte
of its first request, to the first byte of a second one, and to its exit after SIGTERM.

    python -m forkproxy.loadtest.coldstart.forkfloor examples.app:create_app 200

prints one JSON object: p50/p99 of the fork() call as the parent sees it, of the whole
fork + exit + waitpid cycle, the served fork's phases, and the process's RSS and page-table
size (VmPTE: what fork copies). `measure()` runs it in a fresh interpreter for the bench.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from forkproxy.loadtest.report.stats import percentile

if TYPE_CHECKING:
    from forkproxy.backends.process.template import Built


def _status(field: str) -> int:
    """A `kB` field of /proc/self/status (0 where absent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def probe(app: str, n: int) -> dict[str, Any]:
    from forkproxy.backends.process import template  # held like the template holds them

    built = template.build(app)
    gc.collect()
    gc.freeze()
    try:
        served = _served_forks(built, max(10, n // 5))
    except (OSError, RuntimeError) as e:  # the fork() floors above still stand without it
        served = {"served_error": f"{type(e).__name__}: {e}"}
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
        **served,
        "rss_mib": _status("VmRSS") / 1024,
        "page_tables_kib": _status("VmPTE"),
        "loadavg_1m": os.getloadavg()[0],
    }


def _get(port: int) -> float:
    """GET / on a new connection; the time of the first response byte (after reading it all)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: floor\r\nConnection: close\r\n\r\n")
        first = conn.recv(1)
        t = time.perf_counter()
        while conn.recv(65536):
            pass
    if not first:
        raise RuntimeError("the served fork closed without answering")
    return t


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _served_forks(built: Built, n: int) -> dict[str, Any]:
    """n forks running the backend's child code on a socket listening before the fork, each
    asked for GET / at once (the request waits in the backlog while the fork boots), then
    again on a new connection, then SIGTERMed and reaped."""
    from forkproxy.backends.process import template

    first: list[float] = []
    second: list[float] = []
    gone: list[float] = []
    cpu0 = _children_cpu()
    for i in range(n):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        t0 = time.perf_counter()
        pid = template.fork_instance(built, f"floor-{i}", lsock.fileno())
        lsock.close()
        try:
            t1 = _get(port)
            t2 = time.perf_counter()
            t3 = _get(port)
        finally:
            os.kill(pid, signal.SIGTERM)
            t4 = time.perf_counter()
            os.waitpid(pid, 0)
        first.append(t1 - t0)
        second.append(t3 - t2)
        gone.append(time.perf_counter() - t4)
    return {
        "served_n": n,
        "served_fork_cpu_ms": (_children_cpu() - cpu0) / n * 1000,
        "fork_to_first_byte_p50_ms": percentile(first, 50) * 1000,
        "warm_request_same_fork_p50_ms": percentile(second, 50) * 1000,
        "sigterm_to_reaped_p50_ms": percentile(gone, 50) * 1000,
    }


async def measure(app: str, n: int, cwd: str) -> dict[str, Any]:
    """probe() in a fresh interpreter (the bench's own process holds far more than a template)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forkproxy.loadtest.coldstart.forkfloor",
        app,
        str(n),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": cwd},
    )
    # Not procs.run_captured(): it merges stderr into stdout, and the probe's stdout is the
    # JSON parsed below (a warning on stderr would break it).
    try:
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()  # never left behind, forking, on a bench that moved on
        await proc.wait()
        raise RuntimeError("fork floor probe did not finish within 120 s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"fork floor probe failed: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out)
    return result


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], int(sys.argv[2]))))
