"""The docker backend: one labelled container per instance, placed on the least loaded of
several Docker engines, plus a pool of started-probed-then-paused containers that unpause
in milliseconds (the "frozen root"). Config keys: backends/docker/config.py.

This module is the Backend contract only; the parts it composes each do one job:
placement.py (engines, health, least loaded), containers.py (container operations),
paused.py (the paused pool), live.py (live instances and their deaths), watch.py (engine
event streams, reconnects), leftovers.py (an earlier run's containers, sweeps)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from forkproxy.backends.base import (
    LABEL_INSTANCE,
    LABEL_POOL,
    Backend,
    BackendContext,
    Endpoint,
    Instance,
)
from forkproxy.backends.docker import lease
from forkproxy.backends.docker.config import DockerConfig
from forkproxy.backends.docker.containers import Containers
from forkproxy.backends.docker.events import ContainerEvent
from forkproxy.backends.docker.leftovers import Leftovers
from forkproxy.backends.docker.live import LiveSet
from forkproxy.backends.docker.ops import Container, endpoint_of
from forkproxy.backends.docker.paused import RECYCLABLE, PausedPool
from forkproxy.backends.docker.placement import Engines
from forkproxy.backends.docker.watch import EngineWatch
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.engine.unpause import LABEL_PAUSED
from forkproxy.backends.errors import BackendError, BackendUnavailable, StartError
from forkproxy.backends.support.starts import Starts
from forkproxy.backends.support.tasks import TaskSet

__all__ = ["LABEL_PAUSED", "DockerBackend"]

log = logging.getLogger("forkproxy.backend.docker")


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, config: DockerConfig, ctx: BackendContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        self._threads = Threads("docker", threads=16)
        self._tasks = TaskSet("docker", log)  # background work: cancelled on close
        self._starts = Starts("docker", log, self.stop, self._tasks)
        self._engines = Engines(config.engines, config.engine_retry, config.engine_timeout)
        self._containers = Containers(config, ctx, self._threads, self._engine_failed)
        self._live = LiveSet(
            ctx, self._containers, self._tasks, self._engine_failed, lambda: self._paused.refill()
        )
        self._paused = PausedPool(
            config,
            ctx,
            self._engines,
            self._containers,
            self._tasks,
            probe=self._probe,
            remove=self._remove,
            warm=self._warm,
        )
        self._leftovers = Leftovers(
            config, ctx, self._containers, self._paused, self._remove, self._threads
        )
        self._watch = EngineWatch(
            self._engines,
            self._threads,
            ctx.pool_name,
            on_event=self._on_event,
            on_down=self._engine_failed,
            on_back=self._engine_back,
        )

    def __repr__(self) -> str:
        return (
            f"<DockerBackend {len(self._live)} live, {len(self._paused)} paused, {self._engines}>"
        )

    @property
    def spares(self) -> int:
        """Containers parked in the paused pool right now (a start takes one)."""
        return len(self._paused)

    @property
    def down_reason(self) -> str | None:
        """Every engine unreachable: no start can succeed until one answers again."""
        if self._closing or any(e.healthy for e in self._engines):
            return None
        return f"no Docker engine reachable ({self._engines.detail()})"

    # -- Backend API -------------------------------------------------------------------

    async def prepare(self) -> None:
        try:
            await self._prepare()
        except BaseException:
            await self.aclose()  # a proxy that exits on this error leaks no container
            raise

    async def _prepare(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        healthy = await self._engines.connect(self._threads)
        for engine in healthy:
            await self._containers.ensure_image(engine)
        for engine in healthy:
            await self._leftovers.beat(engine)  # the lease exists before any instance
        for engine in healthy:
            await self._leftovers.adopt(engine)
        for engine in self._engines:
            self._tasks.spawn(self._watch.run(engine), f"events:{engine.url}")
        if self._paused.size:
            await self._paused.prime(time.monotonic() + self.ctx.start_timeout * 2)
            self._tasks.spawn(self._paused.refiller(), "refill")

    async def start(self, instance_id: str) -> Instance:
        return await self._starts.run(instance_id, self._start(instance_id))

    async def _start(self, instance_id: str) -> Instance:
        taken = await self._paused.take(instance_id)
        if taken is not None:
            c, endpoint, unpause = taken
            inst = self._register(instance_id, c, endpoint, ready=True)
            inst.phases = {"unpause": unpause}
            inst.meta["from"] = "paused_pool"
            return inst
        return await self._cold_start(instance_id)

    async def _cold_start(self, instance_id: str) -> Instance:
        tried: set[str] = set()
        while True:
            engine = self._engines.pick()
            tried.add(engine.url)
            try:
                c, attrs, phases = await self._containers.create(
                    engine, instance_id, self.ctx.labels(instance_id)
                )
            except BackendUnavailable as exc:  # try the next engine, if any is left
                if self._engines.exhausted(tried):
                    raise StartError(str(exc), reason="engine_unreachable") from exc
                continue
            try:
                endpoint = endpoint_of(self.cfg, engine, attrs)
            except StartError:
                await self._remove(c)
                raise
            inst = self._register(instance_id, c, endpoint, ready=False)
            inst.phases = phases
            inst.meta["from"] = "create"
            return inst

    def _register(self, instance_id: str, c: Container, ep: Endpoint, *, ready: bool) -> Instance:
        inst = Instance(
            id=instance_id,
            backend=self.name,
            endpoint=ep,
            ready=ready,
            owner_id=self.ctx.owner_id,
            meta={"engine": c.engine.url, "container": c.id[:12], "image": self.cfg.image},
            handle=c,
        )
        self._live.add(inst, c)
        return inst

    async def stop(self, instance: Instance, reason: str) -> None:
        c = instance.handle
        if not isinstance(c, Container):
            raise BackendError(f"instance {instance.id} has no docker handle")
        if instance.meta.get("recycled") == "true":
            return  # stopped already: its container is parked, or serves another instance
        self._live.stopping(instance.id, c)
        if await self._recycle(instance, c, reason):
            instance.meta["recycled"] = "true"
            return
        try:
            await self._paused.settle(c)
            await self._containers.stop(c, reason)
        finally:
            self._live.forget(c)
        self._paused.refill()  # a warm container is gone: the refill may replace it
        await self._leftovers.release(c, claimed=instance.meta.get("claimed") == "true")

    async def _recycle(self, instance: Instance, c: Container, reason: str) -> bool:
        """Idle or surplus: the container goes back to the paused pool if it has room.
        Not one adopted from a stopped run: its labels and environment name that run, and
        its claim marker goes with it when it is removed; a fresh one of ours replaces it."""
        if reason not in RECYCLABLE or self._closing or self._leftovers.adopted(c):
            return False
        if self._live.instance_id(c.id) != instance.id or self._live.is_dead(instance.id):
            return False  # not (or no longer) a live instance of ours, or it died
        return await self._paused.recycle(c, instance.endpoint, lambda: self._live.forget(c))

    async def _remove(self, c: Container) -> None:
        try:
            await self._containers.remove(c)
        finally:
            self._live.forget(c)
        await self._leftovers.release(c)

    async def heartbeat(self) -> None:
        for engine in self._engines.healthy():
            await self._leftovers.beat(engine)

    async def leases(self) -> dict[str, str] | None:
        """Each owner's lease markers' names, over the healthy engines."""
        tokens: dict[str, list[str]] = {}
        for engine in self._engines.healthy():
            try:
                rows = await self._leftovers.pool_rows(engine)
            except Exception as exc:
                raise translate(exc, engine.url, "list leases") from exc
            for who, name in lease.leases(rows).items():
                tokens.setdefault(who, []).append(name)
        return {who: " ".join(sorted(names)) for who, names in tokens.items()}

    async def list(self) -> list[Instance]:
        found: list[Instance] = []
        parked = self._paused.ids()
        for engine in self._engines.healthy():
            try:
                rows = await self._containers.rows(engine, f"{LABEL_POOL}={self.ctx.pool_name}")
            except Exception as exc:
                err = translate(exc, engine.url, "list containers")
                if isinstance(err, BackendUnavailable):
                    self._engine_failed(engine, err)
                    continue
                raise err from exc
            claimed = lease.claims(rows)
            for row in rows:
                inst = self._row_instance(engine, row, parked, claimed)
                # Markers are no instances; another run's are listed so that a survivor
                # reaps them with the rest of a stopped run's containers.
                if not lease.is_marker(row) or inst.owner_id != self.ctx.owner_id:
                    found.append(inst)
        return found

    def _row_instance(
        self, engine: Engine, row: dict[str, Any], parked: set[str], claimed: dict[str, str]
    ) -> Instance:
        labels = row.get("Labels") or {}
        cid = row["Id"]
        name = (row.get("Names") or [cid])[0].lstrip("/")
        live_id = self._live.instance_id(cid)
        ours = live_id is not None or cid in parked
        ports = row.get("Ports") or []
        port = next(
            (p.get("PublicPort", 0) for p in ports if p.get("PrivatePort") == self.cfg.port), 0
        )
        return Instance(
            id=live_id or labels.get(LABEL_INSTANCE, name),
            backend=self.name,
            endpoint=Endpoint(self.cfg.publish_host, int(port or 0)),
            ready=row.get("State") == "running",
            owner_id=self.ctx.owner_id if ours else lease.owner_of(row, claimed),
            meta={
                "engine": engine.url,
                "container": cid[:12],
                "state": str(row.get("State", "")),
                "paused_pool": "parked" if cid in parked else labels.get(LABEL_PAUSED, "false"),
                "claimed": "true" if cid in claimed else "false",
                **lease.marker_meta(row),
            },
            handle=Container(engine, cid, name),
        )

    async def alive(self, instance: Instance) -> bool:
        c = instance.handle
        if not isinstance(c, Container) or c.engine.client is None:
            return False
        if self._live.is_dead(instance.id):
            return False
        try:
            attrs = await self._containers.inspect(c)
        except Exception:
            return False
        return bool((attrs.get("State") or {}).get("Status") == "running")

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._paused.stop_filling()
        self._watch.close()
        # Starts in flight finish (their containers are swept below); the rest stop.
        await self._starts.join()
        await self._tasks.aclose()
        await self._threads.drain(within=60)
        await self._watch.aclose()
        # Everything this run created carries its owner label; adopted parked ones do not.
        parked = self._paused.empty()
        keep = {c.id for c in parked}
        sweeps = [self._leftovers.sweep(e, keep, closing=True) for e in self._engines.healthy()]
        await asyncio.gather(*(self._remove(c) for c in parked), *sweeps, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await self._containers.aclose()
        self._engines.close()
        self._threads.shutdown()

    # -- the parts' callbacks ------------------------------------------------------------

    async def _probe(self, c: Container, endpoint: Endpoint) -> None:
        assert self._session is not None, "prepare() first"
        deadline = time.monotonic() + self.ctx.start_timeout
        await self._containers.wait_ready(self._session, c, endpoint, deadline)

    def _warm(self) -> int:
        """Live instances whose containers come back to the paused pool when drained."""
        return self._live.serving(skip=self._leftovers.adopted)

    def _engine_failed(self, engine: Engine, error: BaseException | str) -> None:
        """Mark an engine down: its instances are reported dead, its parked ones dropped."""
        self._engines.mark_down(engine, error)
        self._live.engine_lost(engine)
        self._paused.engine_lost(engine)

    async def _engine_back(self, engine: Engine) -> None:
        # Containers of ours it still holds belong to instances reported dead.
        await self._leftovers.sweep(engine, keep=self._paused.ids())
        self._paused.refill()

    def _on_event(self, event: ContainerEvent) -> None:
        if event.action == "die" and self._paused.died(event):
            return
        self._live.on_event(event)
