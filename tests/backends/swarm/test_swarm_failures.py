"""Why a swarm instance could not start or the backend can start nothing, from what Swarm
reports: a task's Status (state, Err, ContainerStatus.ExitCode) names an app that exits
at once or a node without the image; a manager that stops answering is the backend's
down_reason until its ping answers again. Against the real swarm."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forkproxy.backends.errors import BackendError, StartError
from tests.backends.contract import deaths
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


class Relay:
    """A unix socket in front of the engine's, to take the manager away (every connection
    dropped on accept: a failed connect() would leak the SDK's socket) and bring it back.
    The real engine is behind it all along."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def down(self) -> None:
        self.refusing = True
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_r, up_w = await asyncio.open_unix_connection(ENGINE.removeprefix("unix://"))
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self._writers -= {writer, up_w}


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    if not ENGINE.startswith("unix://"):
        pytest.skip("the relay fronts a unix-socket engine")
    r = Relay(Path(f"/tmp/fp-mgr-{time.monotonic_ns() % 10**9}.sock"))  # short: sun_path
    await r.open()
    yield r
    await r.close()


async def test_an_unreachable_manager_is_the_down_reason_until_it_answers(
    relay: Relay,  # first: it outlives the backend, whose close goes through it
    make_backend: MakeBackend,
) -> None:
    b = await make_backend(manager=f"unix://{relay.path}", engine_retry="300ms", poll="50ms")
    assert b.down_reason is None
    relay.down()
    with pytest.raises(BackendError) as err:
        await b.start("d1")
    assert err.value.reason == "engine_unreachable"
    reason = b.down_reason
    assert reason is not None and str(relay.path) in reason
    relay.refusing = False
    await eventually(lambda: b.down_reason is None, 10, "the manager's ping to answer")
    inst = await b.start("d2")  # services are made again
    await b.stop(inst, "idle")
