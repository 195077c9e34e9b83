"""The shared backend contract (tests/backends/contract.py) on the process backend,
fork mode and exec mode, against real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import pytest

from forkproxy.backends.base import Backend, BackendContext, Instance
from tests.backends.contract import BackendContract
from tests.backends.process.helpers import MakeBackend, exec_command


class TestForkContract(BackendContract):
    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> AsyncIterator[Backend]:
        backend = make_backend(mode="fork")
        await backend.prepare()
        yield backend

    async def kill_out_of_band(self, backend: Backend, instance: Instance) -> None:
        os.kill(instance.handle, signal.SIGKILL)


class TestForkPreforkContract(TestForkContract):
    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> AsyncIterator[Backend]:
        backend = make_backend(mode="fork", prefork=2)
        await backend.prepare()
        yield backend


class TestExecContract(BackendContract):
    ready_within = 20.0

    @pytest.fixture
    async def backend(self, make_backend: MakeBackend) -> AsyncIterator[Backend]:
        backend = make_backend(mode="exec", command=exec_command())
        await backend.prepare()
        yield backend

    async def kill_out_of_band(self, backend: Backend, instance: Instance) -> None:
        os.killpg(instance.handle, signal.SIGKILL)

    async def leftovers(self, backend: Backend, ctx: BackendContext) -> list[Instance]:
        return await backend.list()
