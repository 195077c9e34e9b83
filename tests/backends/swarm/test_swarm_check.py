"""`forkproxy check-config` for the swarm backend against the real engine: the manager must
be a swarm manager, node_engines must name nodes of the swarm, a manager that does not
answer is only logged."""

from __future__ import annotations

import asyncio

import docker
import pytest

from forkproxy.backends.support.table import Table
from forkproxy.backends.swarm import check_config, parse_config
from tests.backends.swarm.conftest import ENGINE, IMAGE

pytestmark = pytest.mark.swarm


async def test_check_config_knows_the_manager_and_the_nodes(swarm: docker.DockerClient) -> None:
    hostname = swarm.info()["Name"]
    good = parse_config(
        Table({"image": IMAGE, "manager": ENGINE, "node_engines": {hostname: ENGINE}}, "")
    )
    assert await asyncio.to_thread(check_config, good) == []
    bad = parse_config(Table({"image": IMAGE, "node_engines": {"nosuchnode": ENGINE}}, ""))
    (problem,) = await asyncio.to_thread(check_config, bad)
    assert (
        str(problem)
        == "backend.node_engines.nosuchnode: no node with that hostname or id in the swarm"
    )
    down = parse_config(Table({"image": IMAGE, "manager": "tcp://127.0.0.1:9"}, ""))
    assert await asyncio.to_thread(check_config, down) == []  # only logged: it may be up later
