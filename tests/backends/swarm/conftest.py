"""Fixtures for tests against a real Docker engine in swarm mode: skip (or, with
FORKPROXY_REQUIRE_SWARM=1, fail) without one. A session that finds the engine outside a
swarm initialises a single-node swarm on 127.0.0.1 and leaves it again at the end; a swarm
that was there already (CI: .ci/swarm.sh) is left as it was."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from backends.base import LABEL_POOL
from tests.backends.docker.conftest import ENGINE, IMAGE, docker_client, test_image

__all__ = ["ENGINE", "IMAGE", "docker_client", "pool_services", "remove_pool", "test_image"]


def _unavailable(msg: str) -> None:
    if os.environ.get("FORKPROXY_REQUIRE_SWARM") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def swarm(docker_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The engine, a swarm manager for the whole session."""
    state = (docker_client.info().get("Swarm") or {}).get("LocalNodeState")
    initialised = False
    if state != "active":
        try:
            docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
            initialised = True
        except docker.errors.APIError as exc:
            _unavailable(f"the engine at {ENGINE} is not in a swarm and `swarm init` failed: {exc}")
    if not (docker_client.info().get("Swarm") or {}).get("ControlAvailable"):
        _unavailable(f"the engine at {ENGINE} is in a swarm but not a manager")
    yield docker_client
    if initialised:
        docker_client.swarm.leave(force=True)


@pytest.fixture(autouse=True)
def _needs_swarm(request: pytest.FixtureRequest) -> None:
    """Tests marked `swarm` need the swarm and the test image (pure ones do not)."""
    if request.node.get_closest_marker("swarm") is not None:
        request.getfixturevalue("test_image")
        request.getfixturevalue("swarm")


@pytest.fixture
def pool_name() -> str:
    return f"sw{os.getpid()}-{time.monotonic_ns() % 10**9}"


def pool_services(client: docker.DockerClient, pool: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = client.api.services(filters={"label": f"{LABEL_POOL}={pool}"})
    return rows


def remove_pool(client: docker.DockerClient, pool: str) -> list[str]:
    """Remove what a test left in its pool (so nothing leaks past it); return the names."""
    left = pool_services(client, pool)
    for row in left:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_service(row["ID"])
    return [str(r["Spec"]["Name"]) for r in left]


def task_container(client: docker.DockerClient, task_id: str) -> str:
    task = client.api.inspect_task(task_id)
    return str(task["Status"]["ContainerStatus"]["ContainerID"])
