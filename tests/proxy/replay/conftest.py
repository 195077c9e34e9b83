"""The replay lab: one real server (servers.py), a forkproxy in front of it whose one
instance is the recording tee (exec backend: tee.py -> the server), per server and module."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.conftest import run_proxy
from tests.proxy.hardening.strict import Scripted
from tests.proxy.replay.runner import LIMITS, Lab, Recording
from tests.proxy.replay.servers import HERE, RAW, SERVERS, running

BY_NAME = {s.name: s for s in [*SERVERS, RAW]}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Lab]:
    server = BY_NAME[request.param]
    work = tmp_path_factory.mktemp(server.name)
    rec = work / "tee"
    rec.mkdir()
    extra = [str(work)] if server is RAW else []
    async with running(server, work, *extra) as port:
        tee = [sys.executable, str(HERE / "tee.py"), "{port}", str(port), str(rec)]
        pool = {
            "min_instances": 1,
            "max_instances": 1,
            "max_concurrency": 4,
            "readiness_path": "/ready",
            "start_timeout": "20s",
        }
        async with run_proxy(
            backend={"mode": "exec", "command": tee}, pool=pool, server=LIMITS
        ) as p:
            yield Lab(
                server.name,
                p.proxy.listen_port,
                Recording(rec),
                Scripted(work) if server is RAW else None,
            )
