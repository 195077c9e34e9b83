"""Waiting out an engine marked down: the ping loop the docker backend's engine watch and
the swarm backend's task watch share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.errors import BackendError


async def until_back(engine: Engine, threads: Threads, closing: Callable[[], bool]) -> bool:
    """Ping a down engine every retry_after (the first time retry_after after it went
    down) until it answers: True, or False once `closing()`."""
    wait = engine.retry_after - (time.monotonic() - engine.down_since)
    while not closing():
        await asyncio.sleep(max(wait, 0.0))
        try:
            await threads.call(engine.connect)
        except BackendError:
            wait = engine.retry_after  # connect() marked it down again
            continue
        return True
    return False
