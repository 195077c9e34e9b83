"""Deaths of the swarm backend's instances. Swarm (20.10) emits no task events and a task may
run on any node, so the manager's task list is polled every `poll` seconds for the tasks
of live services: a task that left `running`, or a service gone behind our back, is a death."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.errors

from forkproxy.backends.base import Instance
from forkproxy.backends.engine.client import Engine, is_unreachable
from forkproxy.backends.engine.health import until_back
from forkproxy.backends.engine.reasons import exit_reason
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.swarm.services import Service

log = logging.getLogger("forkproxy.backend.swarm")
_EXIT = re.compile(r"exit \((\d+)\)")
_BATCH = 50  # service ids per tasks call (they go into the query string)


@dataclass(eq=False)
class Watched:
    instance: Instance
    service: Service
    stopping: bool = False  # a task ending now is our doing, not a death
    dead: bool = False  # reported through on_death already


def death_reason(task: dict[str, Any] | None) -> str:
    """A short counted reason: exited:<code>, rejected, orphaned (its node is gone), removed."""
    if task is None:
        return "removed"
    status = task.get("Status") or {}
    state = str(status.get("State", ""))
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    if state in ("failed", "complete") and code is not None:
        return exit_reason(code)
    if m := _EXIT.search(str(status.get("Err") or "")):
        return exit_reason(m.group(1))
    return state or "gone"


class TaskWatch:
    """The live services and the one task each runs; `run` reports their deaths."""

    def __init__(
        self,
        engine: Engine,
        threads: Threads,
        poll: float,
        owner_label: str,
        on_death: Callable[[Watched, str], None],
    ) -> None:
        self._engine = engine
        self._threads = threads
        self._poll = poll
        self._owner_label = owner_label  # label=value every service of this run carries
        self._on_death = on_death
        self._live: dict[str, Watched] = {}  # service id -> its instance

    def __len__(self) -> int:
        return len(self._live)

    def add(self, instance: Instance, svc: Service) -> None:
        self._live[svc.id] = Watched(instance, svc)

    def instance(self, service_id: str) -> Instance | None:
        w = self._live.get(service_id)
        return w.instance if w else None

    def is_dead(self, service_id: str) -> bool:
        w = self._live.get(service_id)
        return w is not None and w.dead

    def stopping(self, service_id: str) -> None:
        if (w := self._live.get(service_id)) is not None:
            w.stopping = True

    def forget(self, service_id: str) -> None:
        self._live.pop(service_id, None)

    async def run(self) -> None:
        """Poll until cancelled. A failed poll (manager unreachable) is logged and retried:
        a manager that is down says nothing about the tasks on the workers. A manager
        marked down is pinged every engine_retry until it answers."""
        warned = False
        while True:
            await asyncio.sleep(self._poll)
            if not self._engine.healthy:
                await until_back(self._engine, self._threads, lambda: False)  # cancelled
                log.info("Swarm manager %s is back", self._engine.url)
            try:
                await self.check()
                warned = False
            except Exception as exc:
                if is_unreachable(exc):
                    self._engine.mark_down(exc)
                if not warned:
                    log.warning("polling Swarm tasks on %s failed: %r", self._engine.url, exc)
                    warned = True
                continue

    async def check(self) -> None:
        watched = [w for w in self._live.values() if not (w.stopping or w.dead)]
        if not watched:
            return
        try:
            tasks = await self._tasks([w.service.id for w in watched])
        except docker.errors.NotFound:
            # One of the services is gone (removed behind our back) and the filter fails
            # as a whole: ask which still exist, then again for those.
            exist = await self._existing([w.service.id for w in watched])
            tasks = await self._tasks([w.service.id for w in watched if w.service.id in exist])
        services = {t.get("ServiceID") for t in tasks.values()}
        for w in watched:
            if w.stopping or w.dead:  # changed while we asked
                continue
            task = tasks.get(w.service.task_id)
            state = ((task or {}).get("Status") or {}).get("State")
            if task is None and w.service.id in services:
                continue  # history trimmed; the service is there, its other tasks are not ours
            if state == "running":
                continue
            w.dead = True
            reason = death_reason(task)
            log.warning("service %s (instance %s) died: %s", w.service.name, w.instance.id, reason)
            self._on_death(w, reason)

    async def _tasks(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        tasks: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), _BATCH):
            rows = await self._threads.call(
                self._engine.client.api.tasks, filters={"service": ids[i : i + _BATCH]}
            )
            tasks.update({t["ID"]: t for t in rows})
        return tasks

    async def _existing(self, ids: list[str]) -> set[str]:
        rows = await self._threads.call(
            self._engine.client.api.services, filters={"label": self._owner_label}
        )
        return {r["ID"] for r in rows} & set(ids)
