"""The docker backend's live instances: which container serves which instance, and how an
instance's death reaches the pool (an exit, an OOM kill, or its engine lost)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from forkproxy.backends.base import BackendContext, Instance
from forkproxy.backends.docker.containers import Containers, Unreachable
from forkproxy.backends.docker.events import ContainerEvent
from forkproxy.backends.docker.ops import Container
from forkproxy.backends.engine.client import Engine, is_unreachable
from forkproxy.backends.engine.reasons import exit_reason
from forkproxy.backends.support.tasks import TaskSet

log = logging.getLogger("forkproxy.backend.docker")


@dataclass(eq=False)
class Live:
    instance: Instance
    container: Container
    stopping: bool = False  # a die event now is our doing, not a death
    dead: bool = False  # reported through on_death already


class LiveSet:
    def __init__(
        self,
        ctx: BackendContext,
        containers: Containers,
        tasks: TaskSet,
        on_unreachable: Unreachable,
        on_lost: Callable[[], None],
    ) -> None:
        self._ctx = ctx
        self._on_lost = on_lost  # a warm container is gone (the paused pool refills)
        self._containers = containers
        self._tasks = tasks
        self._on_unreachable = on_unreachable
        self._by_id: dict[str, Live] = {}
        self._by_cid: dict[str, str] = {}  # container id -> instance id
        # Container id -> time of its last oom event. An OOM kill of a child process
        # (a CGI, a worker) leaves the container running: only an oom just before a
        # death makes that death an OOM.
        self._oomed: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, instance: Instance, c: Container) -> None:
        c.engine.containers.add(c.id)
        self._by_id[instance.id] = Live(instance, c)
        self._by_cid[c.id] = instance.id

    def instance_id(self, cid: str) -> str | None:
        return self._by_cid.get(cid)

    def is_dead(self, instance_id: str) -> bool:
        live = self._by_id.get(instance_id)
        return live is not None and live.dead

    def serving(self, skip: Callable[[Container], bool]) -> int:
        """Live instances neither stopping nor dead, except those `skip` names."""
        return sum(
            1
            for live in self._by_id.values()
            if not (live.stopping or live.dead or skip(live.container))
        )

    def stopping(self, instance_id: str, c: Container) -> None:
        """A stop begins: the die event it causes is not a death."""
        live = self._by_id.get(instance_id)
        if live is not None and live.container.id == c.id:
            live.stopping = True

    def forget(self, c: Container) -> None:
        iid = self._by_cid.pop(c.id, None)
        if iid is not None and (live := self._by_id.get(iid)) and live.container.id == c.id:
            del self._by_id[iid]
        self._oomed.pop(c.id, None)

    def engine_lost(self, engine: Engine) -> None:
        """Every instance on `engine` is reported dead (once)."""
        for live in list(self._by_id.values()):
            if live.container.engine is engine and not (live.stopping or live.dead):
                live.dead = True
                self._ctx.on_death(live.instance.id, "engine_unreachable")
                self._on_lost()

    def on_event(self, event: ContainerEvent) -> None:
        cid = event.container_id
        if event.action == "oom":
            self._oomed[cid] = time.monotonic()
            return
        if event.action != "die":
            return
        iid = self._by_cid.get(cid)
        live = self._by_id.get(iid) if iid else None
        if live is None or live.stopping or live.dead:
            return
        live.dead = True
        self._on_lost()
        self._tasks.spawn(self._report_death(live, event.exit_code), f"death:{live.instance.id}")

    def _recent_oom(self, cid: str) -> bool:
        return time.monotonic() - self._oomed.get(cid, -1e9) < 2.0

    async def _report_death(self, live: Live, code: str) -> None:
        c = live.container
        oom = self._recent_oom(c.id)
        logs = ""
        try:
            # A SIGKILL (137) may be the OOM killer's: the engine's oom event and the
            # OOMKilled flag can land just after the die event, so look twice.
            for attempt in range(2 if code == "137" else 1):
                if attempt:
                    await asyncio.sleep(0.5)
                state = (await self._containers.inspect(c)).get("State") or {}
                oom = oom or self._recent_oom(c.id) or bool(state.get("OOMKilled"))
                if oom:
                    break
            logs = await self._containers.logs(c, 10)
        except Exception as exc:
            if is_unreachable(exc):
                self._on_unreachable(c.engine, exc)
        reason = exit_reason(code, oom=oom)
        log.warning(
            "container %s (instance %s) died: %s\n%s", c.name, live.instance.id, reason, logs
        )
        self._ctx.on_death(live.instance.id, reason)
