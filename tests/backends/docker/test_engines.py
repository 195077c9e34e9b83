"""Several engines and engine failure at run time. Each "engine" is a real TCP forwarder
to the local Docker socket that the test can cut and restore."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import docker
import docker.errors
import pytest

from forkproxy.backends.errors import StartError
from tests.backends.docker.conftest import ENGINE, MakeBackend, http_get, pool_containers
from tests.conftest import eventually

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not ENGINE.startswith("unix://"), reason="forwards to a local engine socket"
    ),
]
SOCKET = ENGINE.removeprefix("unix://")


class Forwarder:
    """tcp://127.0.0.1:<port> -> the engine's unix socket, with a cut switch."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(SOCKET)
        self._writers |= {writer, up_writer}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()


@pytest.fixture
async def forwarders() -> AsyncIterator[list[Forwarder]]:
    made = [Forwarder(), Forwarder()]
    for f in made:
        await f.start()
    yield made
    for f in made:
        if f._server is not None and f._server.is_serving():
            await f.cut()


# `forwarders` before `make_backend`: the backends close before the engines are cut.
async def test_new_containers_go_to_the_least_loaded_engine(
    forwarders: list[Forwarder], make_backend: MakeBackend
) -> None:
    urls = [f.url for f in forwarders]
    h = await make_backend(engines=urls)
    insts = [await h.backend.start(f"s{n}") for n in range(4)]
    placed = [i.meta["engine"] for i in insts]
    assert sorted(placed) == sorted(urls * 2)
    for inst in insts:
        assert (await http_get(inst.endpoint.url + "/"))[0] == 200
        await h.backend.stop(inst, "idle")


async def test_engine_lost_at_run_time_reports_deaths_then_recovers(
    forwarders: list[Forwarder],
    make_backend: MakeBackend,
    docker_client: docker.DockerClient,
    pool_name: str,
) -> None:
    fwd = forwarders[0]
    h = await make_backend(engines=[fwd.url], engine_retry="1s")
    inst = await h.backend.start("x1")
    assert (await http_get(inst.endpoint.url + "/"))[0] == 200

    await fwd.cut()  # the event stream drops, the ping fails
    await eventually(
        lambda: h.deaths == [("x1", "engine_unreachable")], 10, "on_death(engine_unreachable)"
    )
    with pytest.raises(StartError) as err:
        await h.backend.start("x2")
    assert err.value.reason == "engine_unreachable"
    assert fwd.url in str(err.value)
    await h.backend.stop(inst, "died")  # the engine is away: logged, not raised

    await fwd.start()  # same port: the engine is back after engine_retry
    # The container the proxy could not stop is swept once the engine answers again.
    await eventually(lambda: pool_containers(docker_client, pool_name) == [], 15, "sweep")
    inst3 = await h.backend.start("x3")
    assert (await http_get(inst3.endpoint.url + "/"))[0] == 200
    await h.backend.stop(inst3, "idle")
