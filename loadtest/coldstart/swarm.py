"""Swarm backend benchmark: time to first response byte of a new instance on a Docker Swarm,
for each way to have capacity ready:

- create: `service create` (one replica) -> task running -> first byte (the cold path);
- scale 0->1: a service created ahead with 0 replicas, scaled to 1 (measured, not used:
  it is no faster than a create, the scheduler and the container start are the cost);
- paused pool: a task started ahead and paused on its node, unpaused (what paused_pool does);
- through forkproxy: create, paused pool, and pool.warm_pool = 1 (a running spare).

    python -m loadtest coldstart swarm --n 10      # writes results/swarm_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forkproxy.backends.base import LABEL_POOL, BackendContext
from forkproxy.backends.support.table import Table
from forkproxy.backends.swarm import parse_config
from forkproxy.loadtest.coldstart import add_proxied, start_row, start_series, ttfb_series
from forkproxy.loadtest.coldstart.contract import ColdStart, Command, Result
from forkproxy.loadtest.coldstart.engine import ENGINE, IMAGE, connect
from forkproxy.loadtest.run.proxy import forkproxy

if TYPE_CHECKING:
    import docker

    from forkproxy.backends.swarm.backend import SwarmBackend

# Pin the benchmark to the manager's node (zone=a by .ci/swarm.sh) when it is labelled:
# a second node on the same machine would only add its port allocator to the numbers.
ZONE = ["node.labels.zone == a"]


def _backend(pool: str, paused_pool: int, constraints: list[str]) -> SwarmBackend:
    from forkproxy.backends.swarm.backend import SwarmBackend

    keys = {"image": IMAGE, "manager": ENGINE, "paused_pool": paused_pool, "stop_grace": 2}
    cfg = parse_config(Table({**keys, "constraints": constraints}, ""))
    return SwarmBackend(cfg, BackendContext(pool_name=pool, owner_id=f"{pool}-run"))


async def backend_series(n: int, paused: bool, constraints: list[str]) -> list[float]:
    """start() -> first byte of GET /, straight against the backend (no proxy)."""
    pool = f"bench-swarm-{'paused' if paused else 'create'}-{os.getpid()}"
    return await start_series(_backend(pool, 1 if paused else 0, constraints), n, paused)


def scale_series(client: docker.DockerClient, n: int, constraints: list[str]) -> list[float]:
    """A service made ahead with 0 replicas, scaled to 1 -> first byte (blocking; raw SDK)."""
    import urllib.request

    from docker.types import ContainerSpec, Placement, RestartPolicy, ServiceMode, TaskTemplate

    from forkproxy.backends.engine.client import Engine
    from forkproxy.backends.swarm.services import scale

    api = client.api
    engine = Engine(ENGINE, 10.0)
    engine.client = client
    pool = f"bench-swarm-scale-{os.getpid()}"
    ttfb: list[float] = []
    for i in range(n):
        template = TaskTemplate(
            ContainerSpec(IMAGE, labels={LABEL_POOL: pool}),
            restart_policy=RestartPolicy("none"),
            placement=Placement(constraints=constraints or None),
        )
        ports = {"Ports": [{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}]}
        made = api.create_service(
            template,
            name=f"{pool}-{i}",
            labels={LABEL_POOL: pool},
            mode=ServiceMode("replicated", 0),
            endpoint_spec=ports,
        )
        try:
            t0 = time.perf_counter()
            scale(engine, made["ID"], 1)
            port = 0
            while not port:
                for t in api.tasks(filters={"service": made["ID"]}):
                    found = ((t.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
                    if t["Status"]["State"] == "running" and found:
                        port = found[0]["PublishedPort"]
                if time.perf_counter() - t0 > 60:
                    raise TimeoutError("scaled service not running within 60 s")
                time.sleep(0.005)
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.005)
            ttfb.append(time.perf_counter() - t0)
        finally:
            api.remove_service(made["ID"])
    return ttfb


async def proxy_series(
    work: Path, n: int, mode: str, constraints: list[str]
) -> tuple[list[float], int, str]:
    """A client's first byte through forkproxy; every request gets a new instance."""
    name = f"bench-proxy-swarm-{mode}-{os.getpid()}"
    backend: dict[str, Any] = {
        "type": "swarm",
        "image": IMAGE,
        "manager": ENGINE,
        "stop_grace": "2s",
        "paused_pool": 2 if mode == "paused" else 0,
        "constraints": constraints,
    }
    pool: dict[str, Any] = {"max_requests_per_instance": 1, "idle_ttl": "1s", "max_instances": 4}
    if mode == "warm":
        pool["warm_pool"] = 1
    base = {"server": {"name": name}, "backend": backend}
    async with forkproxy(work, name, base, pool, wait_instances=1 if mode == "warm" else 0) as fp:
        # Between samples: the retired instance is drained and its spare replaced (untimed).
        gap = 0.3 if mode == "create" else 2.5
        ttfb, _, failures = await ttfb_series(fp.url + "/", n, gap)
        command = f"{fp.command} with [pool] {pool}, [backend] {backend}"
    return ttfb, failures, command


def _constraints(client: docker.DockerClient) -> list[str]:
    me = client.api.inspect_node(client.info()["Swarm"]["NodeID"])
    return ZONE if me["Spec"].get("Labels", {}).get("zone") == "a" else []


# The shared benchmark's n is sized for millisecond starts; a swarm sample costs ~1-3 s
# (create, drain, a spare's refill), so there its series stop at this many (~1 min in all)
# and the scale 0->1 series, a one-off comparison for docs/swarm.md, is left out.
BENCH_MAX_N = 5


class Swarm(ColdStart):
    command = Command(
        "swarm",
        "swarm backend: service create vs scale 0->1 vs paused pool vs warm_pool",
        10,
        "starts per series",
        "swarm_bench.json",
    )

    def where(self) -> dict[str, str]:
        return {"image": IMAGE, "manager": ENGINE}

    async def series(self, n: int, work: Path) -> Result:
        return await run(min(n, BENCH_MAX_N), work, scale=False)

    async def measure(self, args: argparse.Namespace, work: Path) -> Result:
        return await run(args.n, work)


async def run(n: int, work: Path, scale: bool = True) -> Result:
    """Every series, n samples each (`scale`: with the scale 0->1 one)."""
    client, why = connect(swarm=True)
    if client is None:
        return Result(skipped=[("swarm backend", why)])
    try:
        where = _constraints(client)
        create = await backend_series(n, False, where)
        rows = [start_row("swarm backend: service create -> first byte", create, 0, len(create))]
        if scale:
            scaled = await asyncio.to_thread(scale_series, client, n, where)
            path = "swarm (not used): service scale 0->1 -> first byte"
            rows.append(start_row(path, scaled, 0, len(scaled)))
        unpause = await backend_series(n, True, where)
        rows.append(start_row("swarm backend: paused pool (unpause) -> first byte", unpause, 0, n))
        commands = [
            f"swarm backend direct: {n} x (start(), GET / until 200, stop()), image {IMAGE},"
            f" constraints {where}; scale 0->1 with the docker SDK"
        ]
        result = Result(rows, commands)
        labels = {"create": "service create", "paused": "paused pool", "warm": "warm_pool = 1"}
        await add_proxied(result, "swarm", labels, lambda m: proxy_series(work, n, m, where))
        return result
    finally:
        client.close()


BENCH = Swarm()
