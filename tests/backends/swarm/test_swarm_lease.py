"""The swarm backend's lease: a config object per run in the swarm's store, advanced on every
heartbeat, visible to every replica with the pool name, dropped on a clean stop."""

from __future__ import annotations

import uuid

import docker
import pytest

from forkproxy.backends.base import LABEL_POOL, BackendContext
from forkproxy.backends.support.table import Table
from forkproxy.backends.swarm import parse_config
from forkproxy.backends.swarm.backend import SwarmBackend
from tests.backends.swarm.conftest import ENGINE, IMAGE

pytestmark = pytest.mark.swarm


def lease_configs(client: docker.DockerClient, pool: str) -> list[str]:
    rows = client.api.configs(filters={"label": f"{LABEL_POOL}={pool}"})
    return sorted(r["Spec"]["Name"] for r in rows)


async def test_heartbeats_advance_the_lease_and_a_clean_stop_drops_it(
    swarm: docker.DockerClient, pool_name: str
) -> None:
    cfg = parse_config(Table({"image": IMAGE, "manager": ENGINE}, ""))
    a = SwarmBackend(cfg, BackendContext(pool_name, f"a-{uuid.uuid4().hex[:6]}"))
    b = SwarmBackend(cfg, BackendContext(pool_name, f"b-{uuid.uuid4().hex[:6]}"))
    try:
        await a.prepare()
        await b.prepare()
        seen = await b.leases()
        assert seen is not None and set(seen) == {a.ctx.owner_id, b.ctx.owner_id}
        before = seen[a.ctx.owner_id]
        await a.heartbeat()
        after = await b.leases()
        assert after is not None and after[a.ctx.owner_id] != before
        assert after[b.ctx.owner_id] == seen[b.ctx.owner_id]  # only a's moved
        assert len(lease_configs(swarm, pool_name)) == 2  # one config per run, not per beat
        await a.aclose()
        left = await b.leases()
        assert left is not None and set(left) == {b.ctx.owner_id}
    finally:
        await a.aclose()
        await b.aclose()
    assert lease_configs(swarm, pool_name) == []


async def test_a_stopped_runs_lease_is_listed_and_reaped_like_its_services(
    swarm: docker.DockerClient, pool_name: str
) -> None:
    cfg = parse_config(Table({"image": IMAGE, "manager": ENGINE}, ""))
    gone = SwarmBackend(cfg, BackendContext(pool_name, f"gone-{uuid.uuid4().hex[:6]}"))
    survivor = SwarmBackend(cfg, BackendContext(pool_name, f"live-{uuid.uuid4().hex[:6]}"))
    try:
        await gone.prepare()
        await survivor.prepare()
        (listed,) = await survivor.list()  # its own lease is not listed
        assert listed.owner_id == gone.ctx.owner_id and listed.meta["marker"] == "lease"
        await survivor.stop(listed, "orphan")  # what the pool does once `gone` stopped
        leases = await survivor.leases()
        assert leases is not None and set(leases) == {survivor.ctx.owner_id}
    finally:
        await gone.aclose()  # its lease is gone already: not an error
        await survivor.aclose()
    assert lease_configs(swarm, pool_name) == []
