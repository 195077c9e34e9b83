"""The docker backend's paused pool (the "frozen root"): containers started, probed and
then paused ahead of demand, so a start is an unpause (~10 ms) instead of a run (~200 ms).
An instance stopped as idle or surplus is paused and parked again while the pool has room
(recycle()), so `paused_pool` containers stay warm: parked, or serving as instances. The
refill (backends/support/refill.py) creates only what that warm set lacks, two at a time."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from forkproxy.backends.base import BackendContext, Endpoint
from forkproxy.backends.docker.config import DockerConfig
from forkproxy.backends.docker.containers import Containers
from forkproxy.backends.docker.events import ContainerEvent
from forkproxy.backends.docker.ops import Container, endpoint_of
from forkproxy.backends.docker.placement import Engines
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.unpause import LABEL_PAUSED, until_serving
from forkproxy.backends.errors import BackendError
from forkproxy.backends.support.refill import SETTLE, Refill
from forkproxy.backends.support.tasks import TaskSet

log = logging.getLogger("forkproxy.backend.docker")

Probe = Callable[[Container, Endpoint], Coroutine[Any, Any, None]]
Remove = Callable[[Container], Coroutine[Any, Any, None]]

# Stop reasons whose container goes back to the pool: the instance was fine, only not
# needed now. Never: max_requests (a retired instance comes back fresh), a death or an
# unreachable instance (its state is unknown), a failed start, shutdown, an orphan.
RECYCLABLE = frozenset({"idle", "surplus"})


@dataclass(eq=False)
class Parked:
    container: Container
    endpoint: Endpoint


class PausedPool:
    def __init__(
        self,
        cfg: DockerConfig,
        ctx: BackendContext,
        engines: Engines,
        containers: Containers,
        tasks: TaskSet,
        *,
        probe: Probe,
        remove: Remove,
        warm: Callable[[], int],
    ) -> None:
        self.size = cfg.paused_pool
        self._cfg = cfg
        self._ctx = ctx
        self._engines = engines
        self._containers = containers
        self._tasks = tasks
        self._probe = probe
        self._remove = remove
        self._parked: deque[Parked] = deque()
        self._renames: dict[str, asyncio.Task[None]] = {}  # taken container id -> its rename
        self._renaming: set[str] = set()  # ids whose rename call is in flight
        # taken container id -> its unpause call, which may outlive the start (unpause.py)
        self._unpausing: dict[str, asyncio.Task[BackendError | None]] = {}
        self._returning = 0  # stopped instances being paused to be parked (recycle())
        # taken, still unpausing: neither parked nor live yet, but warm all the same (else a
        # refill during a slow unpause makes one container too many, and the taken one finds
        # no room when it comes back)
        self._taking = 0
        # Held: parked and being recycled. Warm: live instances that come back when drained.
        self._refill = Refill(
            cfg.paused_pool, self._held, self._park_one, log, lambda: warm() + self._taking
        )

    def __len__(self) -> int:
        return len(self._parked)

    def ids(self) -> set[str]:
        return {p.container.id for p in self._parked}

    def refill(self) -> None:
        self._refill.set()

    def stop_filling(self) -> None:
        """Closing: the refiller returns, a container being parked is removed instead."""
        self._refill.stop()

    def empty(self) -> list[Container]:
        """Hand back the parked containers (for the caller to remove)."""
        parked = [p.container for p in self._parked]
        self._parked.clear()
        return parked

    # -- taking ------------------------------------------------------------------------

    async def take(self, instance_id: str) -> tuple[Container, Endpoint, float] | None:
        """Unpause a parked container for `instance_id`: (it, its endpoint, seconds until
        it served again); None when the pool is empty."""
        while self._parked:
            parked = self._parked.popleft()
            self._refill.taken()
            c = parked.container
            t0 = time.monotonic()
            self._taking += 1
            try:
                call = await until_serving(
                    self._containers.unpause(c),
                    parked.endpoint,
                    self._ctx.readiness_path,
                    self._tasks,
                )
            except BackendError as exc:
                log.warning("paused container %s unusable: %s", c.name, exc)
                self._tasks.spawn(self._remove(c), "remove")
                continue
            finally:
                self._taking -= 1  # the caller registers it live before its next await
            took = time.monotonic() - t0
            if not call.done():
                self._unpausing[c.id] = call
                call.add_done_callback(functools.partial(self._unpaused, c.id))
            # The name is cosmetic (labels are immutable and keep the parking id): renamed
            # after the first request, as the refill is, so `docker ps` shows which
            # instance a container now serves.
            task = self._tasks.spawn(self._rename_later(c, instance_id), "rename")
            if task is not None:
                self._renames[c.id] = task
            return c, parked.endpoint, took
        return None

    def _unpaused(self, cid: str, _call: asyncio.Task[BackendError | None]) -> None:
        self._unpausing.pop(cid, None)

    async def _rename_later(self, c: Container, instance_id: str) -> None:
        await asyncio.sleep(SETTLE)
        self._renaming.add(c.id)
        try:
            await self._containers.rename(c, self._containers.name_for(instance_id))
        finally:
            self._renaming.discard(c.id)
            self._renames.pop(c.id, None)

    async def settle(self, c: Container) -> None:
        """Before a taken container is stopped: its unpause call and rename must not race
        the removal (dockerd then fails the remove: "unlinkat ...: directory not empty").
        The unpause is waited for; a rename not yet sent is dropped, one in flight waited for."""
        call = self._unpausing.pop(c.id, None)
        if call is not None:
            await asyncio.wait([call])
        task = self._renames.pop(c.id, None)
        if task is None or task.done():
            return
        if c.id not in self._renaming:
            task.cancel()
        await asyncio.wait([task])

    # -- filling -----------------------------------------------------------------------

    async def refiller(self) -> None:
        await self._refill.run()

    async def prime(self, deadline: float) -> None:
        await self._refill.prime(deadline, self._cfg.image)

    async def _park_one(self) -> None:
        pid = f"paused-{uuid.uuid4().hex[:8]}"
        engine = self._engines.pick()
        labels = {**self._ctx.labels(pid), LABEL_PAUSED: "true"}
        c, attrs, _ = await self._containers.create(engine, pid, labels)
        try:
            endpoint = endpoint_of(self._cfg, engine, attrs)
            await self._probe(c, endpoint)
            await self._containers.pause(c)
        except BaseException as exc:
            await asyncio.shield(self._remove(c))
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise translate(exc, engine.url, f"park {c.name}") from exc
            raise
        if self._refill.closing:
            await self._remove(c)
            return
        self._parked.append(Parked(c, endpoint))

    def _held(self) -> int:
        """Parked, and being paused to be parked (recycle())."""
        return len(self._parked) + self._returning

    def has_room(self) -> bool:
        """Parked + being parked (recycled, or made by the refill) below the pool's size."""
        return self._held() + self._refill.filling < self.size

    # -- recycling ---------------------------------------------------------------------

    async def recycle(self, c: Container, endpoint: Endpoint, forget: Callable[[], None]) -> bool:
        """A taken (or cold-made) container whose instance was stopped as idle or surplus:
        pause it and park it, if parked + being parked stay within the pool's size. False
        when it is not taken back (no room, closing, the pause failed): the caller removes
        it. `forget` drops it from the live set just before it is parked, so the refill
        never counts it twice."""
        if self._refill.closing or not self.has_room():
            return False
        self._returning += 1
        try:
            await self.settle(c)  # the unpause and the rename must not race the pause
            await self._containers.pause(c)
        except BackendError as exc:
            log.info("stopped container %s not recycled (pause failed): %s", c.name, exc)
            return False
        finally:
            self._returning -= 1
        if self._refill.closing:
            return False  # aclose() already emptied the pool: the caller removes it
        forget()
        # Taken first: the app in it has served (caches filled, code loaded); a fresh
        # one has only answered its probe.
        self._parked.appendleft(Parked(c, endpoint))
        log.debug("recycled %s into the paused pool", c.name)
        return True

    async def adopt(self, c: Container, paused: bool) -> None:
        """A running (or paused) leftover of an earlier run: probe it, park it."""
        if paused:
            await self._containers.unpause(c)
        attrs = await self._containers.inspect(c)
        endpoint = endpoint_of(self._cfg, c.engine, attrs)
        await self._probe(c, endpoint)
        await self._containers.pause(c)
        c.engine.containers.add(c.id)
        self._parked.append(Parked(c, endpoint))
        log.info("adopted leftover %s into the paused pool", c.name)

    # -- losses ------------------------------------------------------------------------

    def died(self, event: ContainerEvent) -> bool:
        """A die event for a parked container: drop it, refill. False if not ours."""
        for p in list(self._parked):
            if p.container.id == event.container_id:
                log.warning("paused container %s died (exit %s)", p.container.name, event.exit_code)
                self._parked.remove(p)
                self._tasks.spawn(self._remove(p.container), "remove")
                self._refill.set()
                return True
        return False

    def engine_lost(self, engine: Engine) -> None:
        kept = [p for p in self._parked if p.container.engine is not engine]
        if len(kept) != len(self._parked):
            self._parked = deque(kept)
            self._refill.set()
