"""Deaths of swarm instances as the pool hears them: an exit code from the task state, an
OOM kill told apart through the node's engine (a SIGKILL alone is exited:137)."""

from __future__ import annotations

import pytest

from tests.backends.contract import deaths
from tests.backends.swarm.conftest import MakeBackend

pytestmark = pytest.mark.swarm


async def test_an_exit_is_reported_with_its_code(make_backend: MakeBackend) -> None:
    b = await make_backend(command=["sh", "-c", "sleep 1; exit 3"])
    inst = await b.start("e1")
    assert await deaths(b.ctx).wait_for(inst.id, 15) == "exited:3"


async def test_oom_is_reported_as_oom(make_backend: MakeBackend, on_manager: str) -> None:
    # PID 1 allocates 64 MB (dd's buffer) under a 16 MB limit: the kernel OOM-kills it and
    # the task fails with exit 137; the container's OOMKilled flag says why.
    b = await make_backend(
        memory="16m",
        constraints=[on_manager],  # the manager's node: its engine is known
        command=["sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=64M count=1"],
    )
    inst = await b.start("m1")
    assert await deaths(b.ctx).wait_for(inst.id, 15) == "oom"
