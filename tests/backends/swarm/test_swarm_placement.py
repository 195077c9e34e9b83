"""Placement by the swarm over two real nodes: the manager's engine (zone=a) and a second
dockerd on this machine joined as a worker (zone=b, .ci/swarm.sh). Constraints, limits and
the scheduler's own balancing reach the tasks; an unsatisfiable constraint fails the start."""

from __future__ import annotations

import asyncio
import functools

import docker
import pytest

from forkproxy.backends.errors import StartError
from tests.backends.contract import get, serves
from tests.backends.swarm.conftest import MakeBackend, engine_of, pool_services
from tests.conftest import eventually

pytestmark = pytest.mark.swarm


def node_id(client: docker.DockerClient) -> str:
    return str(client.info()["Swarm"]["NodeID"])


async def test_constraint_places_the_task_on_the_worker(
    make_backend: MakeBackend, swarm: docker.DockerClient, worker: docker.DockerClient
) -> None:
    # .ci/swarm.sh labels the worker zone=b (and the manager zone=a)
    b = await make_backend(constraints=["node.labels.zone == b"], memory="64m", cpus=0.25)
    inst = await b.start("on-b")
    assert inst.handle.node_id == node_id(worker)
    assert not inst.ready  # a cold task: running is not listening yet (the pool probes it)
    await eventually(lambda: serves(inst.endpoint.url + "/"), 15, "the task to serve")
    status, body = await get(inst.endpoint.url + "/")
    assert status == 200 and "forkproxy-test/httpd" in body.decode()
    # The limits reach the container the worker's engine runs.
    task = swarm.api.inspect_task(inst.handle.task_id)
    container = worker.api.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container["HostConfig"]["Memory"] == 64 * 1024**2
    assert container["HostConfig"]["NanoCpus"] == 250_000_000
    assert container["Config"]["Labels"]["io.forkproxy.instance"] == "on-b"


async def test_the_scheduler_spreads_instances_over_both_nodes(
    make_backend: MakeBackend, swarm: docker.DockerClient, worker: docker.DockerClient
) -> None:
    # No preference: Swarm's default ranks nodes by their active task count. (A spread
    # preference would not help: Swarm spreads the tasks of one service, and every instance
    # is a service of its own; measured, it put both instances in zone a, docs/swarm.md.)
    b = await make_backend()
    a, c = await asyncio.gather(b.start("one"), b.start("two"))
    assert {a.handle.node_id, c.handle.node_id} == {node_id(swarm), node_id(worker)}
    for url in (a.endpoint.url + "/", c.endpoint.url + "/"):
        await eventually(functools.partial(serves, url), 15, "the task to serve")
        assert (await get(url))[0] == 200
    for inst in (a, c):
        assert engine_of(swarm, inst.handle.node_id)


async def test_an_unsatisfiable_constraint_fails_the_start_and_leaves_nothing(
    make_backend: MakeBackend, swarm: docker.DockerClient, pool_name: str
) -> None:
    b = await make_backend(start_timeout=3.0, constraints=["node.labels.zone == nowhere"])
    with pytest.raises(StartError) as err:
        await b.start("nowhere")
    assert err.value.reason == "no_suitable_node"
    assert "no suitable node" in str(err.value)
    assert pool_services(swarm, pool_name) == []
