"""Fixtures for tests against a real Docker engine: skip (or, with
FORKPROXY_REQUIRE_DOCKER=1, fail) without one; build the local test image once."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors
import pytest

from forkproxy.backends.base import BackendContext
from forkproxy.backends.docker import create_backend, parse_config
from forkproxy.backends.docker.backend import DockerBackend
from forkproxy.backends.docker.lease import is_marker
from forkproxy.backends.support.table import Table

ROOT = Path(__file__).resolve().parents[3]
ENGINE = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
IMAGE = "forkproxy-test/httpd:latest"


def open_client(timeout: float) -> docker.DockerClient | str:
    """A client that reached ENGINE, or why none could. The SDK leaks the socket of a
    connect that failed (docker/transport/unixconn.py), and its ResourceWarning, raised
    when it is collected, would end an otherwise skipped session with exit status 1: it
    is collected here, silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        client = None
        try:
            client = docker.DockerClient(base_url=ENGINE, timeout=timeout)
            client.ping()
            return client
        except Exception as exc:
            if client is not None:
                client.close()
            why = f"no Docker engine at {ENGINE}: {exc} (start one with: sudo bash .ci/docker.sh)"
        gc.collect()
    return why


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = open_client(30)
    if isinstance(client, str):
        if os.environ.get("FORKPROXY_REQUIRE_DOCKER") == "1":
            pytest.fail(client, pytrace=False)
        pytest.skip(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    res = subprocess.run(
        ["bash", str(ROOT / "tests/images/build.sh")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        pytest.fail(
            f"tests/images/build.sh could not build {IMAGE}:\n{res.stdout}{res.stderr}",
            pytrace=False,
        )
    docker_client.images.get(IMAGE)
    return IMAGE


@pytest.fixture(autouse=True)
def _needs_engine(request: pytest.FixtureRequest) -> None:
    """Tests marked `docker` need the engine and the image (pure ones do not)."""
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("test_image")


@pytest.fixture
def pool_name() -> str:
    return f"t{os.getpid()}-{time.monotonic_ns() % 10**9}"


def pool_containers(client: docker.DockerClient, pool: str, *, markers: bool = False) -> list[Any]:
    """The pool's containers, inspected (lease and claim markers only with `markers`).
    One removed between list and inspect: ask again."""
    while True:
        try:
            found = client.containers.list(all=True, filters={"label": f"io.forkproxy.pool={pool}"})
        except docker.errors.NotFound:
            continue
        return [c for c in found if markers or not is_marker({"Labels": c.labels})]


class Harness:
    """A backend under test plus the deaths it reported."""

    def __init__(self, backend: DockerBackend, ctx: BackendContext) -> None:
        self.backend = backend
        self.ctx = ctx
        self.deaths: list[tuple[str, str]] = []
        ctx.on_death = lambda iid, reason: self.deaths.append((iid, reason))


MakeBackend = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_backend(
    docker_client: docker.DockerClient, pool_name: str
) -> AsyncIterator[MakeBackend]:
    """make_backend(prepare=True, **backend_keys): a DockerBackend for this test's pool;
    closed at teardown, after which the pool must have no containers left."""
    made: list[Harness] = []

    async def make(*, prepare: bool = True, owner: str = "", **keys: Any) -> Harness:
        cfg = parse_config(Table({"image": IMAGE, "engines": [ENGINE], **keys}, "backend"))
        ctx = BackendContext(
            pool_name=pool_name,
            owner_id=owner or f"owner-{len(made)}-{pool_name}",
            start_timeout=15.0,
        )
        h = Harness(create_backend(cfg, ctx), ctx)
        made.append(h)
        if prepare:
            await h.backend.prepare()
        return h

    yield make
    try:
        for h in made:
            await h.backend.aclose()
    finally:
        left = pool_containers(docker_client, pool_name, markers=True)
        for c in left:  # do not leak into the next test, but still fail this one
            c.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


async def http_get(url: str, timeout: float = 15.0) -> tuple[int, str]:
    """GET until the server answers at all (it may still be starting); return status, body."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        while True:
            try:
                async with s.get(url) as r:
                    return r.status, await r.text()
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)
