"""Fixtures for tests against a real Docker engine in swarm mode: skip (or, with
FORKPROXY_REQUIRE_SWARM=1, fail) without one. A session that finds the engine outside a
swarm initialises a single-node swarm on 127.0.0.1 and leaves it again at the end; a swarm
that was there already (CI: .ci/swarm.sh) is left as it was."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import docker
import docker.errors
import pytest

from forkproxy.backends.base import LABEL_POOL
from forkproxy.backends.support.table import Table
from forkproxy.backends.swarm import parse_config
from forkproxy.backends.swarm.backend import SwarmBackend
from tests.backends.contract import recording_context
from tests.backends.docker.conftest import ENGINE, IMAGE, docker_client, open_client, test_image

__all__ = [
    "ENGINE",
    "IMAGE",
    "docker_client",
    "kill_task",
    "pool_services",
    "remove_pool",
    "test_image",
]


def _unavailable(msg: str) -> NoReturn:
    if os.environ.get("FORKPROXY_REQUIRE_SWARM") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def swarm() -> Iterator[docker.DockerClient]:
    """The engine, a swarm manager for the whole session."""
    client = open_client(60)
    if isinstance(client, str):
        _unavailable(client)
    info = client.info()
    state = (info.get("Swarm") or {}).get("LocalNodeState")
    initialised = False
    if state != "active":
        try:
            client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
            initialised = True
        except docker.errors.APIError as exc:
            _unavailable(f"the engine at {ENGINE} is not in a swarm and `swarm init` failed: {exc}")
    if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
        _unavailable(f"the engine at {ENGINE} is in a swarm but not a manager")
    yield client
    if initialised:
        client.swarm.leave(force=True)
    client.close()


@pytest.fixture(autouse=True)
def _needs_swarm(request: pytest.FixtureRequest) -> None:
    """Tests marked `swarm` need the swarm and the test image (pure ones do not)."""
    if request.node.get_closest_marker("swarm") is not None:
        request.getfixturevalue("swarm")  # first: no engine is "no swarm" (fails if required)
        request.getfixturevalue("test_image")


@pytest.fixture
def pool_name() -> str:
    return f"sw{os.getpid()}-{time.monotonic_ns() % 10**9}"


MakeBackend = Callable[..., Awaitable[SwarmBackend]]


@pytest.fixture
async def make_backend(swarm: docker.DockerClient, pool_name: str) -> AsyncIterator[MakeBackend]:
    """make_backend(start_timeout=30, owner="", **backend_keys): a prepared SwarmBackend on
    this test's pool whose deaths go to a DeathLog (tests.backends.contract.deaths(b.ctx));
    closed at teardown, after which the pool must have no service left."""
    made: list[SwarmBackend] = []

    async def make(start_timeout: float = 30.0, owner: str = "", **keys: Any) -> SwarmBackend:
        cfg = parse_config(Table({"image": IMAGE, "manager": ENGINE, "stop_grace": 2, **keys}, ""))
        ctx = recording_context(pool_name, start_timeout=start_timeout)
        ctx.owner_id = owner or ctx.owner_id
        b = SwarmBackend(cfg, ctx)
        made.append(b)
        await b.prepare()
        return b

    yield make
    try:
        for b in made:
            await b.aclose()
    finally:
        left = remove_pool(swarm, pool_name)
    assert not left, f"services left behind: {left}"


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


ENV_FILE = Path("/tmp/forkproxy-swarm.env")  # written by .ci/swarm.sh


def worker_engine() -> str | None:
    """The second dockerd joined as a worker (.ci/swarm.sh), if there is one."""
    if url := os.environ.get("FORKPROXY_SWARM_WORKER"):
        return url
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "FORKPROXY_SWARM_WORKER" and value:
                return value
    return None


def worker_node_id(url: str) -> str:
    client = docker.DockerClient(base_url=url)
    try:
        return str(client.info()["Swarm"]["NodeID"])
    finally:
        client.close()


@pytest.fixture(scope="session")
def worker(swarm: docker.DockerClient, test_image: str) -> Iterator[docker.DockerClient]:
    """The worker node's engine, holding the manager's test image (no registry here)."""
    url = worker_engine()
    if url is None:
        _unavailable("no second swarm node (run: sudo bash .ci/swarm.sh)")
    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        info = client.info()
    except Exception as exc:
        client.close()
        _unavailable(f"the worker engine at {url} does not answer: {exc}")
    if (info.get("Swarm") or {}).get("LocalNodeState") != "active":
        client.close()
        _unavailable(f"the engine at {url} is not in the swarm (run: sudo bash .ci/swarm.sh)")
    node = swarm.api.inspect_node(info["Swarm"]["NodeID"])
    if (node["Spec"].get("Labels") or {}).get("zone") != "b":
        client.close()
        _unavailable("the worker node is not labelled zone=b (run: sudo bash .ci/swarm.sh)")
    want = swarm.images.get(test_image).id
    try:
        have = client.images.get(test_image).id
    except docker.errors.ImageNotFound:
        have = None
    if have != want:  # rebuilt on the manager since: copy it over
        client.images.load(b"".join(swarm.api.get_image(test_image)))
    yield client
    client.close()


@pytest.fixture
def on_manager(swarm: docker.DockerClient) -> str:
    """A constraint that keeps tasks on the manager's node (whose engine the backend has)."""
    return f"node.id == {swarm.info()['Swarm']['NodeID']}"


@pytest.fixture
def on_worker(worker: docker.DockerClient) -> str:
    """A constraint that puts tasks on the worker node."""
    return f"node.id == {worker.info()['Swarm']['NodeID']}"


def engine_of(swarm: docker.DockerClient, node_id: str) -> str:
    """The engine URL of a swarm node: the manager's, or the worker's."""
    if node_id == (swarm.info().get("Swarm") or {}).get("NodeID"):
        return ENGINE
    url = worker_engine()
    assert url is not None, f"node {node_id} is not the manager and no worker engine is known"
    return url


def kill_task(swarm: docker.DockerClient, task_id: str) -> None:
    """Kill a task's container through its node's engine: the swarm only sees it exit."""
    task = swarm.api.inspect_task(task_id)
    client = docker.DockerClient(base_url=engine_of(swarm, task["NodeID"]))
    try:
        client.api.kill(task["Status"]["ContainerStatus"]["ContainerID"])
    finally:
        client.close()
