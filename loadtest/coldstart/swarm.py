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
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import LABEL_POOL, BackendContext
from backends.support.table import Table
from backends.swarm import parse_config
from loadtest.coldstart import provenance, start_row, start_series, ttfb_series
from loadtest.coldstart.docker import write_json
from loadtest.report.table import render
from loadtest.run.procs import REPO
from loadtest.run.proxy import forkproxy

if TYPE_CHECKING:
    import docker

    from backends.swarm.backend import SwarmBackend

IMAGE = "forkproxy-test/httpd:latest"
ENGINE = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
# Pin the benchmark to the manager's node (zone=a by .ci/swarm.sh) when it is labelled:
# a second node on the same machine would only add its port allocator to the numbers.
ZONE = ["node.labels.zone == a"]


def _backend(pool: str, paused_pool: int, constraints: list[str]) -> SwarmBackend:
    from backends.swarm.backend import SwarmBackend

    keys = {"image": IMAGE, "manager": ENGINE, "paused_pool": paused_pool, "stop_grace": 2}
    cfg = parse_config(Table({**keys, "constraints": constraints}, ""))
    return SwarmBackend(cfg, BackendContext(pool_name=pool, owner_id=f"{pool}-run"))


async def backend_series(n: int, paused: bool, constraints: list[str]) -> list[float]:
    """start() -> first byte of GET /, straight against the backend (no proxy)."""
    pool = f"bench-swarm-{'paused' if paused else 'create'}-{os.getpid()}"
    backend = _backend(pool, 1 if paused else 0, constraints)
    await backend.prepare()
    try:
        return await start_series(backend, n, paused)
    finally:
        await backend.aclose()


def scale_series(client: docker.DockerClient, n: int, constraints: list[str]) -> list[float]:
    """A service made ahead with 0 replicas, scaled to 1 -> first byte (blocking; raw SDK)."""
    import urllib.request

    from docker.types import ContainerSpec, Placement, RestartPolicy, ServiceMode, TaskTemplate

    from backends.docker.engine import Engine
    from backends.swarm.services import scale

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


def _swarm_client() -> tuple[docker.DockerClient | None, str]:
    import docker

    client = docker.DockerClient(base_url=ENGINE, timeout=30)
    try:
        info = client.info()
        client.images.get(IMAGE)
    except Exception as exc:
        client.close()
        return None, f"no Docker engine or image {IMAGE} at {ENGINE}: {exc}"
    if not (info.get("Swarm") or {}).get("ControlAvailable"):
        client.close()
        return None, f"the engine at {ENGINE} is not a Swarm manager (run: bash .ci/swarm.sh)"
    return client, ""


def _constraints(client: docker.DockerClient) -> list[str]:
    me = client.api.inspect_node(client.info()["Swarm"]["NodeID"])
    return ZONE if me["Spec"].get("Labels", {}).get("zone") == "a" else []


# The shared benchmark's n is sized for millisecond starts; a swarm sample costs ~1-3 s
# (create, drain, a spare's refill), so there its series stop at this many (~1 min in all)
# and the scale 0->1 series, a one-off comparison for docs/swarm.md, is left out.
BENCH_MAX_N = 5


async def coldstart(n: int, work: Path | None = None) -> dict[str, Any]:
    """The cold-start rows (shape of loadtest.sections.coldstart) for the shared benchmark."""
    return await run(min(n, BENCH_MAX_N), work, scale=False)


async def run(n: int, work: Path | None = None, scale: bool = True) -> dict[str, Any]:
    """Every series, n samples each (`scale`: with the scale 0->1 one)."""
    client, why = _swarm_client()
    if client is None:
        return {"rows": [], "commands": [], "skipped": [("swarm backend", why)]}
    tmp = tempfile.TemporaryDirectory(prefix="bench-swarm-") if work is None else None
    work = Path(tmp.name) if tmp is not None else work
    assert work is not None
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
        skipped: list[tuple[str, str]] = []
        labels = {"create": "service create", "paused": "paused pool", "warm": "warm_pool = 1"}
        try:
            for mode, label in labels.items():
                ttfb, failures, command = await proxy_series(work, n, mode, where)
                rows.append(
                    start_row(f"client -> forkproxy -> swarm {label}", ttfb, failures, len(ttfb))
                )
                commands.append(command)
        except (RuntimeError, TimeoutError, OSError) as exc:
            skipped.append(("through forkproxy, swarm", str(exc).splitlines()[0]))
        return {"rows": rows, "commands": commands, "skipped": skipped}
    finally:
        client.close()
        if tmp is not None:
            tmp.cleanup()


def print_table(result: dict[str, Any]) -> None:
    keys = ["path", "n", "failures", "p50_ms", "p99_ms", "min_ms", "max_ms"]
    headers = ["path", "n", "fail", "p50 ms", "p99 ms", "min", "max"]
    print("\n" + render(headers, [[r[k] for k in keys] for r in result["rows"]]))
    for what, why in result["skipped"]:
        print(f"skipped {what}: {why}")


async def main_async(n: int, out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp:
        result = await run(n, Path(tmp))
    if not result["rows"]:
        print(result["skipped"][0][1], file=sys.stderr)
        return 2
    command = f"python -m loadtest coldstart swarm --n {n}"
    result.update(provenance(n, command, image=IMAGE, manager=ENGINE))
    await asyncio.to_thread(write_json, out, result)
    print_table(result)
    print(f"\nwrote {out}")
    return 0


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=10, help="starts per series (default 10)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "swarm_bench.json")


def main(args: argparse.Namespace) -> int:
    return asyncio.run(main_async(args.n, args.out))
