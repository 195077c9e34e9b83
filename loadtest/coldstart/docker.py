"""Docker backend benchmark: time to first response byte of a new instance from the
paused pool (unpause) vs create+start of the same image, directly and through forkproxy,
and a burst of 100 concurrent requests at an idle docker pool (starts stay bounded).

    python -m loadtest coldstart docker --n 30      # writes results/docker_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from forkproxy.backends.base import LABEL_POOL, BackendContext
from forkproxy.backends.docker import parse_config
from forkproxy.backends.support.table import Table
from forkproxy.loadtest.coldstart import add_proxied, start_row, start_series, ttfb_series
from forkproxy.loadtest.coldstart.contract import ColdStart, Command, Result
from forkproxy.loadtest.coldstart.engine import ENGINE, IMAGE, connect
from forkproxy.loadtest.run.proxy import forkproxy

if TYPE_CHECKING:
    import docker

    from forkproxy.backends.docker.backend import DockerBackend

BURST = 100
MAX_CONCURRENCY = 10
MAX_STARTING = 4
PROXY_PAUSED_POOL = 2


def _backend(pool: str, paused_pool: int) -> DockerBackend:
    from forkproxy.backends.docker.backend import DockerBackend

    cfg = parse_config(Table({"image": IMAGE, "engines": [ENGINE], "paused_pool": paused_pool}, ""))
    return DockerBackend(cfg, BackendContext(pool_name=pool, owner_id=f"{pool}-run"))


async def _count(client: docker.DockerClient, pool: str, status: str) -> int:
    rows = await asyncio.to_thread(
        client.api.containers, filters={"label": f"{LABEL_POOL}={pool}", "status": status}
    )
    return len(rows)


async def wait_idle(client: docker.DockerClient, pool: str, n: int) -> None:
    """Untimed: an idle proxy, as the backend-direct series has it: the paused pool full
    again (`n` parked) and the previous sample's container gone (none running), so no
    refill's create+start or retired container's stop shares the engine with a sample."""
    deadline = time.monotonic() + 30
    while await _count(client, pool, "paused") < n or await _count(client, pool, "running") > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the paused pool did not refill within 30 s")
        await asyncio.sleep(0.02)


async def backend_series(client: docker.DockerClient, n: int, paused: bool) -> list[float]:
    """start() -> first byte of GET /, straight against the backend (no proxy)."""
    pool = f"bench-{'paused' if paused else 'create'}-{os.getpid()}"
    return await start_series(_backend(pool, 1 if paused else 0), n, paused)


def _engine_once(client: docker.DockerClient, label: str) -> float:
    """The engine's own figure: a started, answering, paused container; `unpause` -> the first
    response byte of GET / (a raw socket, retried every millisecond). No backend code."""
    import socket

    api = client.api
    created = api.create_container(
        IMAGE,
        labels={label: "1"},
        ports=[8080],
        detach=True,
        host_config=api.create_host_config(port_bindings={8080: ("127.0.0.1", None)}),
    )
    cid = created["Id"]
    try:
        api.start(cid)
        port = int(api.port(cid, 8080)[0]["HostPort"])

        def first_byte(deadline: float) -> None:
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        if s.recv(1):
                            return
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("container never answered")
                time.sleep(0.001)

        first_byte(time.monotonic() + 30)  # up and answering before it is paused
        api.pause(cid)
        time.sleep(0.05)
        t0 = time.perf_counter()
        api.unpause(cid)
        first_byte(time.monotonic() + 30)
        return time.perf_counter() - t0
    finally:
        api.remove_container(cid, force=True)


async def engine_series(client: docker.DockerClient, n: int) -> list[float]:
    label = f"forkproxy-bench-engine-{os.getpid()}"
    return [await asyncio.to_thread(_engine_once, client, label) for _ in range(n)]


async def proxy_series(
    client: docker.DockerClient, work: Path, n: int, paused: bool
) -> tuple[list[float], int, str]:
    """A client's first byte through forkproxy; every request gets a new container."""
    name = f"bench-proxy-{'paused' if paused else 'create'}-{os.getpid()}"
    base = {
        "server": {"name": name},
        "backend": {
            "type": "docker",
            "image": IMAGE,
            "paused_pool": PROXY_PAUSED_POOL if paused else 0,
        },
    }
    pool = {"max_requests_per_instance": 1, "idle_ttl": "1s", "max_instances": 4}

    async def idle() -> None:
        await wait_idle(client, name, PROXY_PAUSED_POOL)
        await asyncio.sleep(0.1)  # paused in docker a moment before the proxy knows

    async with forkproxy(work, name, base, pool) as fp:
        before = idle if paused else None
        # 0.2 s apart: let the retired container go, measure starts only
        ttfb, _, failures = await ttfb_series(fp.url + "/", n, 0.2, before)
        command = f"{fp.command} with [pool] {pool}, [backend] {base['backend']}" + (
            "; each request once the paused pool is full and the last container gone"
            if paused
            else ""
        )
    return ttfb, failures, command


def _starts(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^forkproxy_instance_starts_total\{result="([^"]+)"\} (\S+)$', metrics, re.M
    ):
        out[m.group(1)] = float(m.group(2))
    return out


async def burst(work: Path) -> dict[str, Any]:
    """100 concurrent requests at an idle docker pool with max_concurrency = 10."""
    name = f"bench-burst-{os.getpid()}"
    base = {"server": {"name": name}, "backend": {"type": "docker", "image": IMAGE}}
    pool = {
        "max_concurrency": MAX_CONCURRENCY,
        "target_concurrency": 7,
        "max_starting": MAX_STARTING,
        "max_instances": 20,
        "hold_timeout": "60s",
        "idle_ttl": "30s",
    }
    url_path = "/cgi-bin/slow?ms=500"  # long enough that the requests really overlap
    async with forkproxy(work, name, base, pool) as fp:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=90),
        ) as s:

            async def one() -> int:
                try:
                    async with s.get(fp.url + url_path) as resp:
                        await resp.read()
                        return resp.status
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return 0

            t0 = time.perf_counter()
            statuses = await asyncio.gather(*(one() for _ in range(BURST)))
            elapsed = time.perf_counter() - t0
        starts = _starts(await fp.metrics())
        command = f"{fp.command} with [pool] {pool}; {BURST} concurrent GET {url_path}"
    started = int(sum(starts.values()))
    bound = math.ceil(BURST / MAX_CONCURRENCY) + MAX_STARTING
    ok = sum(1 for st in statuses if st == 200)
    return {
        "requests": BURST,
        "ok": ok,
        "statuses": {str(k): statuses.count(k) for k in sorted(set(statuses))},
        "containers_started": started,
        "start_results": starts,
        "bound": bound,
        "within_bound": started <= bound,
        "all_ok": ok == BURST,
        "seconds": elapsed,
        "command": command,
    }


class Docker(ColdStart):
    command = Command(
        "docker",
        "docker backend: paused pool (unpause) vs create+start, and a burst",
        30,
        "cold starts per series",
        "docker_bench.json",
    )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-burst", action="store_true", help="skip the 100-request burst")

    def where(self) -> dict[str, str]:
        return {"image": IMAGE, "engine": ENGINE}

    async def series(self, n: int, work: Path) -> Result:
        client, why = connect()
        if client is None:
            return Result(skipped=[("docker backend", why)])
        try:
            return await _series(client, n, work)
        finally:
            client.close()

    async def measure(self, args: argparse.Namespace, work: Path) -> Result:
        result = await self.series(args.n, work)
        if not result.rows:
            return result
        rows = result.rows
        result.details["ratios"] = {
            "create+start / unpause (backend)": ratio(
                rows,
                "docker backend: create+start -> first byte",
                "docker backend: paused pool (unpause) -> first byte",
            ),
            "create+start / unpause (through forkproxy)": ratio(
                rows,
                "client -> forkproxy -> docker create+start",
                "client -> forkproxy -> docker paused pool (unpause)",
            ),
        }
        if not args.no_burst:
            try:
                b = result.details["burst"] = await burst(work)
                result.ok = b["all_ok"] and b["within_bound"]
            except (RuntimeError, TimeoutError, OSError) as exc:
                result.skipped.append(("burst", str(exc).splitlines()[0]))
        return result

    def summary(self, result: Result) -> list[str]:
        lines = [
            f"p50 ratio {key}: {value:.1f}x"
            for key, value in result.details["ratios"].items()
            if value is not None
        ]
        b = result.details.get("burst")
        if b:
            lines.append(
                f"\nburst: {b['ok']}/{b['requests']} OK in {b['seconds']:.1f}s, "
                f"{b['containers_started']} containers started (bound {b['bound']}: "
                f"{'within' if b['within_bound'] else 'EXCEEDED'}), statuses {b['statuses']}"
            )
        return lines


async def _series(client: docker.DockerClient, n: int, work: Path) -> Result:
    create = await backend_series(client, n, paused=False)
    unpause = await backend_series(client, n, paused=True)
    engine = await engine_series(client, n)
    rows = [
        start_row("docker engine alone: unpause -> first byte", engine, 0, len(engine)),
        # every sample is a new container by construction
        start_row("docker backend: create+start -> first byte", create, 0, len(create)),
        start_row("docker backend: paused pool (unpause) -> first byte", unpause, 0, len(unpause)),
    ]
    commands = [
        f"docker engine alone: {n} x (create, start, GET / until it answers, pause; then "
        f"unpause -> first byte of GET / by a raw socket retried every 1 ms), image {IMAGE}",
        f"docker backend direct: {n} x (start(), GET / until 200, stop()), image {IMAGE}",
    ]
    result = Result(rows, commands)
    labels = {False: "create+start", True: "paused pool (unpause)"}
    await add_proxied(result, "docker", labels, lambda p: proxy_series(client, work, n, p))
    return result


def ratio(rows: list[dict[str, Any]], slow: str, fast: str) -> float | None:
    by = {r["path"]: r for r in rows}
    if slow in by and fast in by and by[fast]["p50_ms"] > 0:
        return float(by[slow]["p50_ms"] / by[fast]["p50_ms"])
    return None


BENCH = Docker()
