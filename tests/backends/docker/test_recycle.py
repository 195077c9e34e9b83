"""Recycling against a real engine: an instance stopped as idle or surplus goes back to the
paused pool (same container, paused) and serves the next start; other stops remove it; the
refill counts the warm set (paused_pool = N keeps N containers warm, one of them parked);
replicas and sweeps keep a recycled container like any parked one."""

from __future__ import annotations

import asyncio
import time

import docker
import pytest

from forkproxy.backends.base import LABEL_OWNER, Instance
from forkproxy.backends.docker.backend import DockerBackend
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.orphans import OrphanReaper
from tests.backends.docker.conftest import MakeBackend, http_get, pool_containers
from tests.conftest import eventually

pytestmark = pytest.mark.docker


def states(client: docker.DockerClient, pool: str) -> dict[str, str]:
    """Container id -> state, for the pool's containers (markers left out)."""
    return {c.id: c.status for c in pool_containers(client, pool)}


async def settled(b: DockerBackend, parked: int) -> None:
    """The refill is done: `parked` containers parked, none being made."""
    await eventually(
        lambda: b.spares == parked and b._paused._refill.filling == 0,
        30,
        f"{parked} parked, none being filled",
    )


async def served(inst: Instance) -> None:
    status, body = await http_get(inst.endpoint.url + "/", timeout=5)
    assert (status, "hello from forkproxy-test/httpd" in body) == (200, True)


async def test_an_idle_instance_is_paused_back_and_serves_the_next_start(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=2)
    b = h.backend
    first = await b.start("r1")
    await served(first)
    c = first.handle
    # r1 serving + one parked = 2 warm: nothing is made
    await settled(b, 1)
    before = states(docker_client, pool_name)
    assert len(before) == 2

    await b.stop(first, "idle")
    assert c.id in b._paused.ids() and b.spares == 2
    await b.stop(first, "idle")  # idempotent: the parked container stays
    await b.stop(first, "shutdown")
    assert c.id in b._paused.ids() and b.spares == 2
    assert states(docker_client, pool_name) == {**before, c.id: "paused"}  # nothing new

    again = await b.start("r2")
    assert again.handle.id == c.id  # the recycled one goes first
    assert again.ready and again.meta["from"] == "paused_pool"
    await served(again)
    # renamed to the instance it serves now
    await eventually(
        lambda: docker_client.containers.get(c.id).name == f"forkproxy-{pool_name}-r2",
        5,
        "the rename to r2",
    )
    listed = {i.id: i for i in await b.list()}
    assert listed["r2"].handle.id == c.id and listed["r2"].owner_id == h.ctx.owner_id
    await b.stop(first, "idle")  # the old instance's stop again: r2's container stays
    assert states(docker_client, pool_name)[c.id] == "running"

    await b.stop(again, "surplus")  # the other recyclable reason
    assert states(docker_client, pool_name)[c.id] == "paused"
    assert h.deaths == []  # pausing is no death


async def test_a_cold_made_instance_is_recycled_too(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=2)
    b = h.backend
    taken = [await b.start(f"t{i}") for i in range(2)]  # both parked ones
    cold = await b.start("cold")  # the pool is empty (the refill waits SETTLE first)
    assert cold.meta["from"] == "create"
    await served(cold)
    await settled(b, 1)  # the one spare kept parked while the warm set serves
    await b.stop(taken[0], "max_requests")  # leaves room for one
    await b.stop(cold, "idle")
    assert states(docker_client, pool_name)[cold.handle.id] == "paused"
    assert cold.handle.id in b._paused.ids()
    await b.stop(taken[1], "idle")


async def test_stops_for_other_reasons_remove_the_container(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=3)
    b = h.backend
    for reason in ("max_requests", "unreachable", "died", "failed", "shutdown"):
        inst = await b.start(f"x-{reason}")
        await served(inst)
        await b.stop(inst, reason)
        assert inst.handle.id not in states(docker_client, pool_name), reason
        assert inst.handle.id not in b._paused.ids()


async def test_a_full_pool_removes_instead_of_recycling(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=1)
    b = h.backend
    inst = await b.start("f1")
    await served(inst)
    # one warm serving, yet one spare is kept parked: the pool is full
    await settled(b, 1)
    await b.stop(inst, "idle")
    assert inst.handle.id not in states(docker_client, pool_name)
    assert b.spares == 1


async def test_the_refill_counts_live_instances_and_replaces_a_dead_one(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=3)
    b = h.backend
    primed = set(states(docker_client, pool_name))
    a = await b.start("w1")
    w2 = await b.start("w2")
    await served(a)
    await served(w2)
    await settled(b, 1)
    # two serving + one parked = 3 warm: the refill made nothing, even given time
    await asyncio.sleep(1.0)
    assert set(states(docker_client, pool_name)) == primed and b.spares == 1

    docker_client.containers.get(a.handle.id).kill()  # a warm one dies
    await eventually(lambda: ("w1", "exited:137") in h.deaths, 15, "the death reported")
    await settled(b, 2)  # replaced before the pool stops the dead instance
    made = set(states(docker_client, pool_name)) - primed
    assert len(made) == 1
    await b.stop(a, "died")
    assert a.handle.id not in states(docker_client, pool_name)
    await b.stop(w2, "idle")  # room for a third parked one
    assert b.spares == 3 and w2.handle.id in b._paused.ids()
    await asyncio.sleep(0.5)
    assert len(states(docker_client, pool_name)) == 3  # the warm set holds 3, all parked


async def test_replicas_and_sweeps_keep_a_recycled_container(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    mine = await make_backend(paused_pool=2)
    other = await make_backend(paused_pool=1)  # a replica sharing the pool name
    inst = await mine.backend.start("k1")
    await served(inst)
    c = inst.handle
    await settled(mine.backend, 1)
    await mine.backend.stop(inst, "idle")
    assert c.id in mine.backend._paused.ids()

    # the replica lists it as its live owner's and its reaper leaves it
    found = {i.handle.id: i for i in await other.backend.list()}
    assert found[c.id].owner_id == mine.ctx.owner_id
    reaper = OrphanReaper(other.backend, other.ctx.owner_id, Metrics(), 60, time.monotonic)
    await reaper.sweep()
    # our own sweep (an engine back) keeps it like any parked one
    engine = c.engine
    await mine.backend._leftovers.sweep(engine, keep=mine.backend._paused.ids())
    assert states(docker_client, pool_name)[c.id] == "paused"
    row = docker_client.containers.get(c.id)
    assert row.labels[LABEL_OWNER] == mine.ctx.owner_id
    # and it still serves
    again = await mine.backend.start("k2")
    assert again.handle.id == c.id
    await served(again)
    await mine.backend.stop(again, "max_requests")
    assert c.id not in states(docker_client, pool_name)
