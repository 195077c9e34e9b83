"""Cold start measured against its floors, through forkproxy:

- added_series(): a cold request's first byte minus a warm request's, both by the same raw
  client on a new connection, interleaved (the client's own connect/parse cost cancels out),
  split by the proxy's Server-Timing into waiting on the start, the instance's answer, and
  the proxy's own hop;
- fresh_rate(): fresh instances per second under wrk (max_requests_per_instance = 1) and
  where the CPU went per instance: proxy, template (fork), the instances (boot, serve, exit),
  the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil

from forkproxy.loadtest.load.httpload import run_load
from forkproxy.loadtest.report.stats import percentile
from forkproxy.loadtest.run.proxy import RunningProxy


@dataclass
class Reply:
    ttfb: float  # seconds from before connect() to the first response byte
    status: int
    headers: dict[str, str] = field(default_factory=dict)


async def raw_get(url: str, timeout: float = 30.0) -> Reply:
    """GET on a new connection with nothing but a socket: the leanest client there is, so
    what it measures is the server side."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(request.encode())
        first = await asyncio.wait_for(reader.read(1), timeout)
        t1 = time.perf_counter()
        rest = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head = (first + rest).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not first or len(head[0].split()) < 2:
        return Reply(t1 - t0, 0)
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(t1 - t0, int(head[0].split()[1]), headers)


def timing(reply: Reply) -> dict[str, float]:
    """Server-Timing durations in seconds: queue (waited for an instance), upstream."""
    out = {}
    for m in re.finditer(r"(\w+);dur=([\d.]+)", reply.headers.get("server-timing", "")):
        out[m.group(1)] = float(m.group(2)) / 1000
    return out


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


async def added_series(cold_url: str, warm_url: str, n: int, pause: float) -> dict[str, Any]:
    """n cold and n warm requests, alternating, each on a new connection."""
    cold: list[Reply] = []
    warm: list[Reply] = []
    failures = 0
    for _ in range(n):
        for url, into in ((warm_url, warm), (cold_url, cold)):
            try:
                reply = await raw_get(url)
            except (OSError, TimeoutError):
                failures += 1
                continue
            if reply.status != 200:
                failures += 1
                continue
            into.append(reply)
        await asyncio.sleep(pause)  # let the retired instance stop: measure starts, not reaping
    cold_s, warm_s = [r.ttfb for r in cold], [r.ttfb for r in warm]
    warm_p50 = percentile(warm_s, 50)
    added = [t - warm_p50 for t in cold_s]
    # Where a cold request's added time went, by the proxy's own Server-Timing (p50 each).
    queue = [timing(r).get("queue", 0.0) for r in cold]
    upstream_extra = percentile([timing(r).get("upstream", 0.0) for r in cold], 50) - percentile(
        [timing(r).get("upstream", 0.0) for r in warm], 50
    )
    return {
        "n": len(cold),
        "failures": failures,
        "distinct_instances": len({r.headers.get("x-instance-id", "") for r in cold}),
        "ttfb_s": cold_s,
        "warm_p50_ms": warm_p50 * 1000,
        "cold_p50_ms": _ms(cold_s, 50),
        "added_p50_ms": _ms(added, 50),
        "added_p99_ms": _ms(added, 99),
        "waited_on_start_p50_ms": _ms(queue, 50),
        "instance_first_answer_extra_p50_ms": upstream_extra * 1000,
    }


def _cpu(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of its reaped children) of a live process."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system, t.children_user + t.children_system


async def _template_pid(fp: RunningProxy) -> int | None:
    # from the admin's ladder, not a command line: a template forked from the shared zygote
    # is the zygote's child and carries the zygote's argv
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.get(f"{fp.admin}/instances") as resp,
    ):
        listing = await resp.json()
    for ladder in (listing.get("ladder") or {}).values():
        if ladder and ladder.get("template_pid"):
            return int(ladder["template_pid"])
    return None


def _starts(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^forkproxy_instance_starts_total\{[^}]*\} (\S+)$", metrics, re.M)
    )


async def fresh_rate(fp: RunningProxy, connections: int, seconds: float) -> dict[str, Any]:
    """wrk at `connections` against a proxy with max_requests_per_instance = 1."""
    tpl = await _template_pid(fp)
    if tpl is None:
        raise RuntimeError("no fork template under the proxy")
    starts0 = _starts(await fp.metrics())
    proxy0, tpl0 = _cpu(fp.proc.pid), _cpu(tpl)
    mine0 = psutil.Process().cpu_times()
    load = await run_load(fp.url + "/", connections, seconds, True)
    mine1 = psutil.Process().cpu_times()
    proxy1, tpl1 = _cpu(fp.proc.pid), _cpu(tpl)
    starts = _starts(await fp.metrics()) - starts0
    per = 1000 / starts if starts else 0.0  # ms of CPU per started instance
    return {
        "connections": connections,
        "instances_per_s": starts / max(1.0, round(seconds)),
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "errors": load.errors,
        "load1": load.load1,
        "cpu_ms_per_instance": {
            "proxy": (proxy1[0] - proxy0[0]) * per,
            "template (fork)": (tpl1[0] - tpl0[0]) * per,
            "instances (boot, serve, exit)": (tpl1[1] - tpl0[1]) * per,
            "wrk": (
                mine1.children_user
                + mine1.children_system
                - mine0.children_user
                - mine0.children_system
            )
            * per,
        },
        "command": load.command,
    }
