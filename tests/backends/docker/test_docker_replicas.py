"""Replicas sharing a pool name on the real Docker engine: two `forkproxy run` processes
keep each other's containers (tests/replicas.py); an owner on another host is judged by
its lease marker; a dead run's paused container is adopted by exactly one replica; an
engine that accepts connections and never answers is skipped like a refused one."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from forkproxy.backends.base import LABEL_OWNER
from forkproxy.backends.docker.lease import LABEL_CLAIMS, LABEL_LEASE
from tests.backends.docker.conftest import ENGINE, MakeBackend, pool_containers
from tests.backends.docker.test_proxy_docker import config_text
from tests.conftest import ROOT, ProxyProcess
from tests.replicas import dead_owner, lease_decides, remote_owner, run_scenario

pytestmark = pytest.mark.docker


async def test_docker_replicas_share_a_pool_name(
    proxy_process: Callable[[str], ProxyProcess],
    docker_client: docker.DockerClient,
    pool_name: str,
) -> None:
    text = config_text(
        pool_name,
        pool={"min_instances": 1, "orphan_timeout": "12s"},
        backend={"paused_pool": 1},
    )

    async def left_of(owner: str) -> int:
        rows = await asyncio.to_thread(pool_containers, docker_client, pool_name)
        return sum(1 for c in rows if c.labels.get(LABEL_OWNER) == owner)

    survivor = await run_scenario(
        proxy_process, text, "/cgi-bin/slow?ms=3000", left_of, 12, start_timeout=60
    )
    assert "of stopped owner" in survivor.log.read_text()
    assert pool_containers(docker_client, pool_name, markers=True) == []


async def test_an_owner_on_another_host_is_judged_by_its_lease(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    remote = await make_backend(owner=remote_owner("dk"))
    inst = await remote.backend.start("r1")
    markers = [
        c
        for c in pool_containers(docker_client, pool_name, markers=True)
        if LABEL_LEASE in c.labels
    ]
    assert len(markers) == 1 and markers[0].status == "created"  # never started
    survivor = await make_backend()
    t0 = time.perf_counter()
    for _ in range(10):
        await survivor.backend.heartbeat()
    print(f"docker: heartbeat {(time.perf_counter() - t0) * 100:.1f} ms")
    leases = await survivor.backend.leases()
    assert leases is not None and remote.ctx.owner_id in leases
    took = await lease_decides(
        survivor.backend, survivor.ctx.owner_id, remote.backend, inst.id, within=6.0
    )
    print(f"docker: reaped {took:.1f}s after the last beat (orphan_timeout 6s)")
    # the dead owner's lease marker went with its instance
    owners = {c.labels.get(LABEL_OWNER) for c in pool_containers(docker_client, pool_name)}
    assert remote.ctx.owner_id not in owners


async def test_a_dead_runs_paused_container_is_adopted_by_exactly_one_replica(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    first = await make_backend(paused_pool=1, owner=dead_owner("first"))
    (leftover,) = [c for c in pool_containers(docker_client, pool_name) if c.status == "paused"]
    first.backend._paused.empty()  # a crash: forget the parked container, clean nothing

    both = await asyncio.gather(
        make_backend(paused_pool=1, adopt=True), make_backend(paused_pool=1, adopt=True)
    )
    rows = pool_containers(docker_client, pool_name, markers=True)
    (claim,) = [c for c in rows if LABEL_CLAIMS in c.labels]
    assert claim.labels[LABEL_CLAIMS] == leftover.id
    adopters = [h for h in both if leftover.id in h.backend._paused.ids()]
    assert [h.ctx.owner_id for h in adopters] == [claim.labels[LABEL_OWNER]]
    (adopter,) = adopters
    # the other replica neither lists it as its own nor would reap it (a live owner)
    other = next(h for h in both if h is not adopter)
    found = {i.handle.id: i for i in await other.backend.list()}
    assert found[leftover.id].owner_id == adopter.ctx.owner_id
    inst = await adopter.backend.start("a1")
    assert inst.handle.id == leftover.id
    await adopter.backend.stop(inst, "idle")
    ids = {c.id for c in pool_containers(docker_client, pool_name, markers=True)}
    assert leftover.id not in ids and claim.id not in ids  # the claim went with it


@pytest.fixture
def silent_engine() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


async def test_an_engine_that_never_answers_is_skipped_quickly(
    make_backend: MakeBackend, silent_engine: str
) -> None:
    t0 = time.monotonic()
    h = await make_backend(engines=[silent_engine, ENGINE], engine_timeout="1s")
    took = time.monotonic() - t0
    assert "1/2 engines up" in repr(h.backend)
    assert took < 10, f"prepare took {took:.1f}s with a silent engine"
    inst = await h.backend.start("q1")
    assert inst.meta["engine"] == ENGINE
    await h.backend.stop(inst, "idle")


def test_check_config_asks_the_engine_for_the_image(tmp_path: Path, pool_name: str) -> None:
    cfg = tmp_path / "img.toml"
    cfg.write_text(
        config_text(pool_name, backend={"image": "forkproxy-test/absent:9"}).replace(
            "[server]", '[server]\nlisten = "127.0.0.1:0"\nadmin = "127.0.0.1:0"', 1
        )
    )
    res = subprocess.run(
        [sys.executable, "-m", "forkproxy", "check-config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    lines = [line.strip() for line in res.stderr.splitlines() if line.startswith("  ")]
    assert lines == [
        f"backend.image: 'forkproxy-test/absent:9' not found on Docker engine {ENGINE} "
        '(pull = "never")'
    ]
