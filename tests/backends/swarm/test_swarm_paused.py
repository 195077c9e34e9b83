"""The swarm backend's warm path: spares started ahead, probed, then paused through their
node's engine; a start unpauses one. Spares on a node without a known engine stay running;
a spare that dies is replaced, not reported as an instance's death."""

from __future__ import annotations

import asyncio

import docker
import pytest

from tests.backends.contract import deaths, get
from tests.backends.swarm.conftest import MakeBackend, engine_of, kill_task, pool_services
from tests.conftest import eventually

pytestmark = pytest.mark.swarm


def container_state(swarm: docker.DockerClient, task_id: str) -> str:
    task = swarm.api.inspect_task(task_id)
    client = docker.DockerClient(base_url=engine_of(swarm, task["NodeID"]))
    try:
        cid = task["Status"]["ContainerStatus"]["ContainerID"]
        return str(client.api.inspect_container(cid)["State"]["Status"])
    finally:
        client.close()


def spare_tasks(swarm: docker.DockerClient, pool: str) -> list[str]:
    """Task ids of the pool's running spares (services labelled as paused-pool members)."""
    out = []
    for svc in pool_services(swarm, pool):
        if svc["Spec"]["Labels"].get("io.forkproxy.paused") == "true":
            for t in swarm.api.tasks(filters={"service": svc["ID"], "desired-state": "running"}):
                out.append(t["ID"])
    return out


async def test_a_start_unpauses_a_parked_spare_and_the_pool_refills(
    make_backend: MakeBackend, swarm: docker.DockerClient, pool_name: str, on_manager: str
) -> None:
    # On the manager's node: its engine is the one the backend already has.
    b = await make_backend(paused_pool=1, constraints=[on_manager])
    assert b.spares == 1
    (spare,) = spare_tasks(swarm, pool_name)
    assert container_state(swarm, spare) == "paused"
    inst = await b.start("warm-1")
    assert inst.meta["from"] == "paused_pool" and inst.ready
    assert inst.phases["unpause"] < 1.0
    assert inst.handle.task_id == spare
    assert (await get(inst.endpoint.url + "/"))[0] == 200  # at once: it was probed
    await eventually(lambda: b.spares == 1, 30, "the paused pool to refill")
    assert deaths(b.ctx).events == []


async def test_a_spare_on_a_node_without_a_known_engine_stays_running(
    make_backend: MakeBackend,
    swarm: docker.DockerClient,
    on_worker: str,
    pool_name: str,
) -> None:
    b = await make_backend(paused_pool=1, constraints=[on_worker])
    (spare,) = spare_tasks(swarm, pool_name)
    assert container_state(swarm, spare) == "running"
    inst = await b.start("warm-2")
    assert inst.meta["from"] == "paused_pool"
    assert (await get(inst.endpoint.url + "/"))[0] == 200


async def test_a_dead_spare_is_replaced_not_reported(
    make_backend: MakeBackend, swarm: docker.DockerClient, pool_name: str, on_manager: str
) -> None:
    b = await make_backend(paused_pool=1, constraints=[on_manager])
    (spare,) = spare_tasks(swarm, pool_name)
    kill_task(swarm, spare)

    def replaced() -> bool:
        return b.spares == 1 and spare_tasks(swarm, pool_name) not in ([], [spare])

    await eventually(replaced, 30, "a new spare")
    assert deaths(b.ctx).events == []
    inst = await b.start("warm-3")
    assert inst.meta["from"] == "paused_pool"
    assert (await get(inst.endpoint.url + "/"))[0] == 200


async def test_closing_while_a_spare_is_refilled_leaves_nothing(
    make_backend: MakeBackend, swarm: docker.DockerClient, pool_name: str, on_manager: str
) -> None:
    b = await make_backend(paused_pool=1, constraints=[on_manager])
    await b.start("warm-4")  # taking the spare starts its refill: a service create in flight
    await asyncio.sleep(0.05)
    await b.aclose()
    assert pool_services(swarm, pool_name) == []
