"""Owned concurrency for the docker backend: a thread pool for blocking SDK calls whose
callers may be cancelled, and a set of owned tasks; both drained on close."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger("forkproxy.backend.docker")
T = TypeVar("T")


class Worker:
    def __init__(self, name: str, threads: int) -> None:
        self._name = name
        # Our own pool: the default executor is small (cores + 4) and shared.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._calls: set[asyncio.Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn in a thread. A cancelled caller does not abandon the call: drain()
        waits for it, so nothing it creates can appear after the backend is closed."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        self._calls.add(fut)
        fut.add_done_callback(self._call_done)
        return await asyncio.shield(fut)

    def _call_done(self, fut: asyncio.Future[Any]) -> None:
        self._calls.discard(fut)
        if not fut.cancelled():
            fut.exception()  # retrieved: a caller that was cancelled cannot

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def drain(
        self, *, keep: Callable[[asyncio.Task[Any]], bool], calls_within: float
    ) -> None:
        """Cancel the tasks `keep` does not spare, await all, then the running calls."""
        for task in list(self._tasks):
            if not keep(task):
                task.cancel()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=calls_within)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
