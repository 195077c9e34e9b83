"""The shared backend contract (tests/backends/contract.py) on the vsphere backend:
Instant Clones of a container-backed parent VM in the vcsim harness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from forkproxy.backends.base import Backend, BackendContext, Instance
from tests.backends.contract import BackendContract
from tests.backends.vsphere.conftest import MakeBackend, find_vm, wait_task

pytestmark = [pytest.mark.vsphere, pytest.mark.timeout(180)]


class TestVsphereContract(BackendContract):
    ready_within = 30.0
    death_within = 15.0

    @pytest.fixture
    async def backend(
        self, make_backend: MakeBackend, ctx: BackendContext, si: Any
    ) -> AsyncIterator[Backend]:
        self.si = si
        backend = make_backend()
        await backend.prepare()
        yield backend

    async def kill_out_of_band(self, backend: Backend, instance: Instance) -> None:
        # Behind the backend's back: the tests' own vCenter session powers the clone off.
        wait_task(find_vm(self.si, instance.handle.name).PowerOffVM_Task())
