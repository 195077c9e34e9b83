"""Work an app does after its response (a Starlette BackgroundTask) runs to its end: the
instance is busy until its app call returns, not idle once the response is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ProxyProcess, eventually, get, instances
from tests.faults.helpers import config

pytest.importorskip("starlette")


@pytest.mark.parametrize("secs", [2.0, 8.0])
async def test_a_background_task_after_the_response_completes(
    proxy_process: Callable[[str], ProxyProcess], tmp_path: Path, secs: float
) -> None:
    p = proxy_process(
        config(
            app="tests.faults.apps:background_app",
            pool='idle_ttl = "200ms"\ntick = "50ms"',
            backend='stop_grace = "1s"',
        )
    )
    await p.start()
    done = tmp_path / "done"
    assert await get(f"{p.url}/?path={done}&s={secs:g}") == (200, "queued")
    await asyncio.sleep(1.0)  # well past idle_ttl: an idle instance would be stopped now
    assert [(i["state"], i["working"]) for i in await instances(p)] == [("ready", True)]
    await eventually(done.exists, secs + 10, "the background task's file")

    async def idle_and_stopped() -> bool:
        return await instances(p) == []

    await eventually(idle_and_stopped, 10, "the instance to go idle and stop once done")
