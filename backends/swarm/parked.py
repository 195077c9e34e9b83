"""The swarm backend's warm capacity: services started ahead of demand, probed, then paused
through their node's engine, so a start is an unpause (~20 ms here) instead of a service
create (~0.6-1.5 s). Swarm cannot pause a service, but a task's container can be paused
on its node and Swarm still sees the task running. A spare on a node whose engine the proxy
cannot reach stays running (still warm, not frozen). Taken ones are refilled two at a time."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from forkproxy.backends.base import BackendContext, Endpoint, Instance
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.engine.unpause import LABEL_PAUSED, Unpauser, until_serving
from forkproxy.backends.errors import BackendError
from forkproxy.backends.support.refill import Refill
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.backends.swarm.nodes import Nodes
from forkproxy.backends.swarm.services import Service
from forkproxy.backends.swarm.watch import TaskWatch

log = logging.getLogger("forkproxy.backend.swarm")

Make = Callable[[str, dict[str, str]], Coroutine[Any, Any, tuple[Service, Endpoint]]]
Probe = Callable[[Endpoint], Coroutine[Any, Any, None]]
Remove = Callable[[Service, str], Coroutine[Any, Any, None]]


@dataclass(eq=False)
class Spare:
    placeholder: Instance  # what the task watch reports a parked spare's death as
    engine: Engine | None  # its node's engine: paused through it; None = left running

    @property
    def service(self) -> Service:
        svc = self.placeholder.handle
        assert isinstance(svc, Service)
        return svc


class ParkedPool:
    def __init__(
        self,
        size: int,
        ctx: BackendContext,
        *,
        make: Make,
        probe: Probe,
        remove: Remove,
        nodes: Nodes,
        threads: Threads,
        tasks: TaskSet,
        watch: TaskWatch,
    ) -> None:
        self.size = size
        self._ctx = ctx
        self._make = make
        self._probe = probe
        self._remove = remove
        self._nodes = nodes
        self._threads = threads
        self._tasks = tasks
        self._watch = watch
        self._unpause = Unpauser(threads)
        self._spares: deque[Spare] = deque()
        # The backend drives it: refill.run() in the background, refill.prime() at startup,
        # refill.stop() on close (backends/support/refill.py, shared with docker's pool).
        self.refill = Refill(size, lambda: len(self._spares), self._park_one, log)

    def __len__(self) -> int:
        return len(self._spares)

    async def aclose(self) -> None:
        await self._unpause.aclose()

    async def take(self) -> tuple[Service, Endpoint, float] | None:
        """Unpause a spare: (its service, endpoint, seconds until it served again); None
        when empty. A stop right after it may reach the node's engine while that finishes
        the unpause call: dockerd orders the two on the container's lock."""
        while self._spares:
            spare = self._spares.popleft()
            self.refill.taken()
            svc = spare.service
            self._watch.forget(svc.id)  # the caller registers it as the new instance
            t0 = time.monotonic()
            if spare.engine is not None:
                try:
                    await until_serving(
                        self._unpause(spare.engine, svc.container_id),
                        spare.placeholder.endpoint,
                        self._ctx.readiness_path,
                        self._tasks,
                    )
                except BackendError as exc:
                    log.warning("spare %s unusable: %s", svc.name, exc)
                    self._tasks.spawn(self._remove(svc, "unusable spare"), "remove")
                    continue
            return svc, spare.placeholder.endpoint, time.monotonic() - t0
        return None

    def died(self, instance_id: str) -> bool:
        """A parked spare's task ended: drop it, refill. False if it is not a spare."""
        for spare in list(self._spares):
            if spare.placeholder.id == instance_id:
                self._spares.remove(spare)
                log.warning("spare %s died", spare.service.name)
                self._tasks.spawn(self._remove(spare.service, "spare died"), "remove")
                self.refill.set()
                return True
        return False

    async def _park_one(self) -> None:
        pid = f"paused-{uuid.uuid4().hex[:8]}"
        svc, endpoint = await self._make(pid, {**self._ctx.labels(pid), LABEL_PAUSED: "true"})
        try:
            await self._probe(endpoint)
            engine = await self._nodes.engine(svc.node_id)
            if engine is not None:
                await self._threads.call(engine.client.api.pause, svc.container_id)
        except BaseException as exc:
            await asyncio.shield(self._remove(svc, "failed to park"))
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise translate(exc, svc.name, "park") from exc
            raise
        if self.refill.closing:
            await self._remove(svc, "closing")
            return
        placeholder = Instance(
            pid, "swarm", endpoint, ready=True, owner_id=self._ctx.owner_id, handle=svc
        )
        self._watch.add(placeholder, svc)
        self._spares.append(Spare(placeholder, engine))
