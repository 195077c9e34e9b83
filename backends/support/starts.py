"""Starts as owned tasks. The pool wraps Backend.start() in a timeout; a start run as its
own task finishes even when its caller is cancelled, and what it made a moment later is
stopped as "abandoned" instead of leaking. On close, join() lets the starts in flight
finish (the backend then sweeps what they made) and takes no new ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from forkproxy.backends.base import Instance
from forkproxy.backends.errors import StartError
from forkproxy.backends.support.tasks import TaskSet

Stop = Callable[[Instance, str], Coroutine[Any, Any, None]]


class _Failed:
    """A start's exception carried as its result: the caller raises it and the pool logs
    it once, with its reason; raised in the task, the TaskSet would log it a second time
    (as an ERROR with a traceback)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


async def _outcome(start: Coroutine[Any, Any, Instance]) -> Instance | _Failed:
    try:
        return await start
    except Exception as exc:
        return _Failed(exc)


class Starts:
    def __init__(self, name: str, log: logging.Logger, stop: Stop, background: TaskSet) -> None:
        self._name = name
        self._log = log
        self._set = TaskSet(f"{name}-starts", log)
        self._stop = stop
        self._background = background  # where an abandoned instance's stop runs
        self._closing = False

    async def run(self, instance_id: str, start: Coroutine[Any, Any, Instance]) -> Instance:
        if self._closing:
            start.close()
            raise StartError(f"{self._name} backend is closing", reason="closing")
        task = self._set.spawn(_outcome(start), f"start:{instance_id}")
        if task is None:
            raise StartError(f"{self._name} backend is closing", reason="closing")
        try:
            result: Instance | _Failed = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._abandoned)
            raise
        if isinstance(result, _Failed):
            raise result.exc
        return result

    def _abandoned(self, task: asyncio.Task[Instance | _Failed]) -> None:
        if task.cancelled() or task.exception() is not None or self._closing:
            return  # closing: the backend's sweep removes it
        inst = task.result()
        if isinstance(inst, _Failed):
            self._log.info("a start nobody waits for any more failed: %s", inst.exc)
            return
        self._background.spawn(self._stop(inst, "abandoned"), f"stop:{inst.id}")

    async def join(self) -> None:
        self._closing = True
        await self._set.join()
