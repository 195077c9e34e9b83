"""Why a swarm instance could not start or the backend can start nothing, from what Swarm
reports: a task's Status (state, Err, ContainerStatus.ExitCode) names an app that exits
at once or a node without the image; a manager that stops answering is the backend's
down_reason until its ping answers again. Against the real swarm."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from forkproxy.backends.errors import BackendError, StartError
from tests.backends.contract import deaths
from tests.backends.docker.test_engines import Forwarder
from tests.backends.swarm.conftest import ENGINE, MakeBackend
from tests.conftest import eventually

pytestmark = pytest.mark.swarm


async def test_an_app_that_exits_at_once_is_named_with_its_code_and_logs(
    make_backend: MakeBackend,
) -> None:
    b = await make_backend(command=["sh", "-c", "echo no-app-here; exit 3"])
    try:
        inst = await b.start("e1")
    except StartError as exc:  # the task failed before the backend saw it run
        assert exc.reason == "exited_before_ready"
        assert "exited:3" in str(exc)
        assert "no-app-here" in str(exc)  # the service's last log lines
    else:  # Swarm showed it running for a moment: its end is a death with the code
        assert await deaths(b.ctx).wait_for(inst.id, 15) == "exited:3"
        await b.stop(inst, "died")


async def test_a_missing_image_is_image_missing(make_backend: MakeBackend) -> None:
    b = await make_backend(image="forkproxy-test/does-not-exist:1")
    with pytest.raises(StartError) as err:
        await b.start("i1")
    assert err.value.reason == "image_missing"
    assert "forkproxy-test/does-not-exist:1" in str(err.value)


@pytest.fixture
async def manager() -> AsyncIterator[Forwarder]:
    """The manager's engine behind a forwarder the test can cut and restore."""
    if not ENGINE.startswith("unix://"):
        pytest.skip("forwards to a local engine socket")
    f = Forwarder()
    await f.start()
    yield f
    await f.cut()


async def test_an_unreachable_manager_is_the_down_reason_until_it_answers(
    manager: Forwarder,  # first: it outlives the backend, whose close goes through it
    make_backend: MakeBackend,
) -> None:
    b = await make_backend(manager=manager.url, engine_retry="300ms", poll="50ms")
    assert b.down_reason is None
    await manager.cut()
    with pytest.raises(BackendError) as err:
        await b.start("d1")
    assert err.value.reason == "engine_unreachable"
    reason = b.down_reason
    assert reason is not None and manager.url in reason
    await manager.start()
    await eventually(lambda: b.down_reason is None, 10, "the manager's ping to answer")
    inst = await b.start("d2")  # services are made again
    await b.stop(inst, "idle")
