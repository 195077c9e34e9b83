"""Owned background tasks: every task the proxy or a backend spawns lives in a TaskSet
that cancels and awaits it on shutdown, and logs an exception nobody awaited."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, name: str = "tasks", logger: logging.Logger | None = None) -> None:
        self._name = name
        self._log = logger or logging.getLogger(f"forkproxy.{name}")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()
            return None
        # the name is formatted lazily by asyncio when shown; no f-string on the hot path
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def join(self) -> None:
        """Take no new tasks; wait for the running ones to end by themselves. For work that
        must finish so what it made can be cleaned up (a start in flight); aclose() cancels."""
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
