"""A backend's own threads for blocking docker SDK calls (docker and swarm make one each).
A caller may be cancelled (the pool times starts out); its call runs on and drain() waits
for it, so nothing a call creates appears after the backend closed. Tasks are owned by
forkproxy.backends.support.tasks.TaskSet."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Threads:
    def __init__(self, name: str, threads: int) -> None:
        # Our own pool: the default executor is small (cores + 4) and shared.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._calls: set[asyncio.Future[Any]] = set()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn in a thread; a cancelled caller does not abandon the call (see drain)."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        self._calls.add(fut)
        fut.add_done_callback(self._call_done)
        return await asyncio.shield(fut)

    def _call_done(self, fut: asyncio.Future[Any]) -> None:
        self._calls.discard(fut)
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that was cancelled cannot

    async def drain(self, within: float) -> None:
        """Wait (at most `within` seconds) for the calls still running."""
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=within)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
