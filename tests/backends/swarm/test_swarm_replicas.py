"""Replicas sharing a pool name on a real swarm: two `forkproxy run` processes keep each
other's services (tests/replicas.py); after one is SIGKILLed, its services and lease are
gone within pool.orphan_timeout. An owner on another host is judged by its lease config."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import docker
import pytest

from forkproxy.backends.base import LABEL_OWNER
from tests.backends.swarm.conftest import MakeBackend, pool_services
from tests.backends.swarm.test_proxy_swarm import config_text
from tests.conftest import ProxyProcess
from tests.replicas import lease_decides, remote_owner, run_scenario

pytestmark = pytest.mark.swarm


async def test_swarm_replicas_share_a_pool_name(
    proxy_process: Callable[[str], ProxyProcess], swarm: docker.DockerClient, pool_name: str
) -> None:
    text = config_text(
        pool_name, pool={"min_instances": 1, "orphan_timeout": "12s"}, backend={"paused_pool": 1}
    )

    async def left_of(owner: str) -> int:
        rows = await asyncio.to_thread(pool_services, swarm, pool_name)
        services = sum(1 for s in rows if s["Spec"]["Labels"].get(LABEL_OWNER) == owner)
        leases = await asyncio.to_thread(
            swarm.api.configs, filters={"label": f"{LABEL_OWNER}={owner}"}
        )
        return services + len(leases)

    survivor = await run_scenario(
        proxy_process, text, "/cgi-bin/slow?ms=3000", left_of, 12, start_timeout=60
    )
    assert "of stopped owner" in survivor.log.read_text()


async def test_an_owner_on_another_host_is_judged_by_its_lease(
    make_backend: MakeBackend, swarm: docker.DockerClient, pool_name: str
) -> None:
    remote = await make_backend(owner=remote_owner("sw"))
    inst = await remote.start("r1")
    survivor = await make_backend()
    leases = await survivor.leases()
    assert leases is not None and remote.ctx.owner_id in leases
    took = await lease_decides(survivor, survivor.ctx.owner_id, remote, inst.id, within=6.0)
    print(f"swarm: reaped {took:.1f}s after the last beat (orphan_timeout 6s)")
    owners = {s["Spec"]["Labels"].get(LABEL_OWNER) for s in pool_services(swarm, pool_name)}
    assert remote.ctx.owner_id not in owners
