"""A Docker engine that is down is pinged every engine_retry, no more: before, once
engine_retry had passed, a failed reconnect was retried at once, in a loop, one thread
call after another. Real docker SDK against a socket path with nothing behind it (the
first ping after an engine is back: tests/faults/test_docker_engine.py)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import warnings
from pathlib import Path

import pytest

from forkproxy.backends.docker.placement import Engines
from forkproxy.backends.docker.watch import EngineWatch
from forkproxy.backends.engine.threads import Threads

# The SDK leaks the socket of each failed connect (docker/transport/unixconn.py) in an
# exception cycle: their ResourceWarnings are silenced here and at the collection below.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_a_down_engine_is_pinged_every_engine_retry(tmp_path: Path) -> None:
    engines = Engines([f"unix://{tmp_path / 'engine.sock'}"], retry=0.3, answer_within=1.0)
    (engine,) = list(engines)
    engine.mark_down("gone")
    attempts: list[float] = []
    real_connect = engine.connect

    def counted() -> None:
        attempts.append(time.monotonic())
        real_connect()

    engine.connect = counted  # type: ignore[method-assign]
    threads = Threads("test-docker", threads=2)

    async def back(_: object) -> None:
        raise AssertionError("nothing answers: the engine cannot be back")

    watch = EngineWatch(
        engines,
        threads,
        "pool",
        on_event=lambda _: None,
        on_down=engines.mark_down,
        on_back=back,
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(watch.run(engine))
        await asyncio.sleep(2.0)
        watch.close()
        task.cancel()
    await threads.drain(within=5)
    await watch.aclose()
    engines.close()
    threads.shutdown()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    # 2 s down at one ping per 0.3 s: about 6 (a loop without a pause: hundreds)
    assert 3 <= len(attempts) <= 9, len(attempts)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.25, gaps
