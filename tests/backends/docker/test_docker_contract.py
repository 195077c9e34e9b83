"""The shared backend contract (tests/backends/contract.py) on the docker backend, with
cold starts and with the paused pool, against the real engine."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import docker
import pytest

from forkproxy.backends.base import Backend, BackendContext, Instance
from forkproxy.backends.docker import create_backend, parse_config
from forkproxy.backends.support.table import Table
from tests.backends.contract import BackendContract, recording_context
from tests.backends.docker.conftest import ENGINE, IMAGE, pool_containers

pytestmark = pytest.mark.docker


class TestDockerContract(BackendContract):
    paused_pool = 0

    @pytest.fixture
    def ctx(self) -> BackendContext:
        return recording_context(f"test-docker-{uuid.uuid4().hex[:8]}", start_timeout=15.0)

    @pytest.fixture
    async def backend(
        self, ctx: BackendContext, docker_client: docker.DockerClient
    ) -> AsyncIterator[Backend]:
        keys = {"image": IMAGE, "engines": [ENGINE], "paused_pool": self.paused_pool}
        cfg = parse_config(Table(keys, "backend"))
        b = create_backend(cfg, ctx)
        await b.prepare()
        yield b
        try:
            await b.aclose()  # a second aclose() (after the contract's own) must be fine
        finally:
            left = pool_containers(docker_client, ctx.pool_name)
            for c in left:
                c.remove(force=True)
        assert not left, f"containers left behind: {[c.name for c in left]}"

    async def kill_out_of_band(self, backend: Backend, instance: Instance) -> None:
        client = docker.DockerClient(base_url=instance.meta["engine"])
        try:
            client.containers.get(instance.handle.id).kill()
        finally:
            client.close()

    async def leftovers(self, backend: Backend, ctx: BackendContext) -> list[Instance]:
        # Ask the engine itself: after aclose() the backend has no client left to ask.
        client = docker.DockerClient(base_url=ENGINE)
        try:
            rows = pool_containers(client, ctx.pool_name)
        finally:
            client.close()
        return [
            Instance(c.labels.get("io.forkproxy.instance", c.name), "docker", None) for c in rows
        ]  # type: ignore[arg-type]


class TestDockerPausedPoolContract(TestDockerContract):
    paused_pool = 2
