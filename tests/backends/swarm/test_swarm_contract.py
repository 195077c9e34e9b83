"""The shared backend contract (tests/backends/contract.py) on the swarm backend, against
the real engine in swarm mode: a service per instance, placed by the swarm."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import docker
import pytest

from forkproxy.backends.base import Backend, BackendContext, Instance
from forkproxy.backends.support.table import Table
from forkproxy.backends.swarm import create_backend, parse_config
from tests.backends.contract import BackendContract, recording_context
from tests.backends.swarm.conftest import (
    ENGINE,
    IMAGE,
    kill_task,
    pool_services,
    remove_pool,
    worker_engine,
    worker_node_id,
)

pytestmark = pytest.mark.swarm


class TestSwarmContract(BackendContract):
    ready_within = 30.0
    paused_pool = 0

    @pytest.fixture
    def ctx(self) -> BackendContext:
        return recording_context(f"test-swarm-{uuid.uuid4().hex[:8]}", start_timeout=30.0)

    @pytest.fixture
    async def backend(
        self, ctx: BackendContext, swarm: docker.DockerClient
    ) -> AsyncIterator[Backend]:
        keys = {"image": IMAGE, "manager": ENGINE, "stop_grace": 2, "paused_pool": self.paused_pool}
        if worker := worker_engine():  # spares on the worker are paused through its engine
            keys["node_engines"] = {worker_node_id(worker): worker}
        cfg = parse_config(Table(keys, "backend"))
        b = create_backend(cfg, ctx)
        await b.prepare()
        yield b
        try:
            await b.aclose()  # a second aclose() (after the contract's own) must be fine
        finally:
            left = remove_pool(swarm, ctx.pool_name)
        assert not left, f"services left behind: {left}"

    async def kill_out_of_band(self, backend: Backend, instance: Instance) -> None:
        client = docker.DockerClient(base_url=ENGINE)
        try:
            kill_task(client, instance.handle.task_id)
        finally:
            client.close()

    async def leftovers(self, backend: Backend, ctx: BackendContext) -> list[Instance]:
        # Ask the manager itself: after aclose() the backend has no client left to ask.
        client = docker.DockerClient(base_url=ENGINE)
        try:
            rows = pool_services(client, ctx.pool_name)
        finally:
            client.close()
        return [Instance(r["Spec"]["Name"], "swarm", None) for r in rows]  # type: ignore[arg-type]


class TestSwarmPausedPoolContract(TestSwarmContract):
    paused_pool = 2
