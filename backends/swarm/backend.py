"""The swarm backend: one Docker Swarm service with one replica per instance, placed by the
swarm's scheduler (constraints, spread preferences, resources), reached on its task's node
address and host-mode published port. Config keys: backends/swarm/config.py.

The parts it composes: services.py (the blocking Swarm calls), watch.py (deaths from task
states), parked.py (spares paused on their node: the warm path), nodes.py (node addresses
and engines), lease.py (this run's lease for replicas on other hosts); the engine client,
its threads and the raw unpause are the substrate it shares with the docker backend
(backends/engine/); readiness is the shared probe (backends/support/probe.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from forkproxy.backends.base import (
    LABEL_INSTANCE,
    LABEL_OWNER,
    LABEL_POOL,
    Backend,
    BackendContext,
    Endpoint,
    Instance,
)
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.errors import (
    BackendConfigError,
    BackendError,
    BackendUnavailable,
    StartError,
)
from forkproxy.backends.support.probe import NotReady, wait_ready
from forkproxy.backends.support.starts import Starts
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.backends.swarm import services
from forkproxy.backends.swarm.config import SwarmConfig
from forkproxy.backends.swarm.lease import Lease, LeaseConfig
from forkproxy.backends.swarm.nodes import Nodes
from forkproxy.backends.swarm.parked import ParkedPool
from forkproxy.backends.swarm.services import Service
from forkproxy.backends.swarm.watch import TaskWatch, Watched

log = logging.getLogger("forkproxy.backend.swarm")

Rows = list[dict[str, Any]]  # module level: in the class, `list` is the method


class SwarmBackend(Backend):
    name = "swarm"

    def __init__(self, config: SwarmConfig, ctx: BackendContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self._closing = False
        self._engine = Engine(config.manager, config.engine_retry)
        self._threads = Threads("swarm", threads=16)
        self._tasks = TaskSet("swarm", log)  # background work: cancelled on close
        self._starts = Starts("swarm", log, self.stop, self._tasks)
        self._session: aiohttp.ClientSession | None = None  # the spares' readiness probe
        self._nodes = Nodes(self._engine, self._threads, config.node_engines, config.engine_retry)
        self._watch = TaskWatch(
            self._engine,
            self._threads,
            config.poll,
            f"{LABEL_OWNER}={ctx.owner_id}",
            on_death=self._died,
        )
        self._lease = Lease(self._engine, self._threads, ctx)
        self._parked = ParkedPool(
            config.paused_pool,
            ctx,
            make=self._make,
            probe=self._probe,
            remove=self._remove,
            nodes=self._nodes,
            threads=self._threads,
            tasks=self._tasks,
            watch=self._watch,
        )

    def __repr__(self) -> str:
        return (
            f"<SwarmBackend {len(self._watch)} watched, {len(self._parked)} parked"
            f" on {self._engine.url}>"
        )

    @property
    def spares(self) -> int:
        """Spares parked right now (a start takes one)."""
        return len(self._parked)

    @property
    def down_reason(self) -> str | None:
        """The manager unreachable: no service can be made until it answers again (the
        task watch pings it every engine_retry). Tasks on the nodes may still serve."""
        engine = self._engine
        if self._closing or engine.healthy or engine.client is None:
            return None
        return f"Swarm manager {engine.url} unreachable ({engine.last_error})"

    # -- Backend API -------------------------------------------------------------------

    async def prepare(self) -> None:
        try:
            await self._threads.call(self._engine.connect)
            info: dict[str, Any] = await self._threads.call(self._engine.client.info)
        except BackendError:
            await self.aclose()
            raise
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            await self.aclose()
            raise BackendConfigError(
                f"the engine at manager = {self.cfg.manager!r} is not a Swarm manager (swarm"
                f" state {swarm.get('LocalNodeState')!r}): run `docker swarm init` there, or"
                " point manager at a manager node's engine",
                reason="config",
            )
        self._nodes.manager_node = str(swarm.get("NodeID") or "")
        if self.cfg.preferences:
            log.warning(
                "preferences %s: Swarm spreads the tasks of one service, and each instance is"
                " a service of its own, so they do not spread instances (they may gather them"
                " under one label value); constraints do apply (docs/swarm.md)",
                list(self.cfg.preferences),
            )
        await self._lease.beat()
        self._tasks.spawn(self._watch.run(), "swarm-tasks")
        if self._parked.size:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
            try:
                await self._parked.refill.prime(
                    time.monotonic() + self.ctx.start_timeout * 2, self.cfg.image
                )
            except BackendError:
                await self.aclose()  # a proxy that exits on this error leaks no service
                raise
            self._tasks.spawn(self._parked.refill.run(), "refill")

    async def start(self, instance_id: str) -> Instance:
        return await self._starts.run(instance_id, self._start(instance_id))

    async def _start(self, instance_id: str) -> Instance:
        taken = await self._parked.take()
        if taken is not None:
            svc, endpoint, unpause = taken
            inst = self._register(instance_id, svc, endpoint, ready=True)
            inst.phases = {"unpause": unpause}
            inst.meta["from"] = "paused_pool"
            return inst
        t0 = time.monotonic()
        svc, endpoint = await self._make(instance_id, self.ctx.labels(instance_id))
        inst = self._register(instance_id, svc, endpoint, ready=False)
        inst.phases = {"create+schedule": time.monotonic() - t0}
        inst.meta["from"] = "create"
        return inst

    async def _make(self, instance_id: str, labels: dict[str, str]) -> tuple[Service, Endpoint]:
        """Create a service and wait for its task to run: (it, where it listens)."""
        name = services.service_name(self.ctx.pool_name, instance_id)
        env = {"FORKPROXY_INSTANCE_ID": instance_id, "FORKPROXY_POOL": self.ctx.pool_name}
        try:
            svc = await self._threads.call(
                services.create, self._engine, self.cfg, name, labels, env
            )
        except Exception as exc:
            raise self._error(exc, f"create service {name}") from exc
        try:
            task = await self._threads.call(
                services.wait_running,
                self._engine,
                svc,
                time.monotonic() + self.ctx.start_timeout,
                min(self.cfg.poll, 0.02),
            )
            port = services.published_port(task, self.cfg.port)
            return svc, Endpoint(await self._nodes.address(svc.node_id), port)
        except BaseException as exc:
            await asyncio.shield(self._remove(svc, "failed start"))
            if isinstance(exc, Exception):
                err = self._error(exc, f"run service {name}")
                log.warning("%s", err)
                raise err from exc
            raise

    def _register(self, instance_id: str, svc: Service, ep: Endpoint, *, ready: bool) -> Instance:
        inst = Instance(
            id=instance_id,
            backend=self.name,
            endpoint=ep,
            ready=ready,
            owner_id=self.ctx.owner_id,
            meta={
                "service": svc.name,
                "node": svc.node_id[:12],
                "task": svc.task_id[:12],
                "image": self.cfg.image,
            },
            handle=svc,
        )
        self._watch.add(inst, svc)
        return inst

    async def _probe(self, endpoint: Endpoint) -> None:
        """The shared readiness probe, for spares the backend warms itself."""
        assert self._session is not None, "prepare() first"
        url = endpoint.url + self.ctx.readiness_path
        try:
            await wait_ready(self._session, url, deadline=time.monotonic() + self.ctx.start_timeout)
        except NotReady as exc:
            raise StartError(str(exc), reason="ready_timeout") from exc

    async def stop(self, instance: Instance, reason: str) -> None:
        svc = instance.handle
        if isinstance(svc, LeaseConfig):  # a stopped run's lease, reaped with its services
            await self._lease.remove(svc)
            return
        if not isinstance(svc, Service):
            raise BackendError(f"instance {instance.id} has no swarm handle")
        self._watch.stopping(svc.id)
        try:
            await self._remove(svc, reason)
        finally:
            self._watch.forget(svc.id)

    async def _remove(self, svc: Service, reason: str) -> None:
        """Drain (scale to 0: SIGTERM, stop_grace, SIGKILL), then remove the service. A
        manager that is unreachable is logged: the sweep of a later run removes it."""
        try:
            await self._threads.call(
                services.drain_and_remove, self._engine, svc, self.cfg.stop_grace
            )
        except Exception as exc:
            err = self._error(exc, f"remove service {svc.name}")
            if not isinstance(err, BackendUnavailable):
                raise err from exc
            log.warning("remove %s (%s): %s", svc.name, reason, err)

    async def list(self) -> list[Instance]:
        rows = await self._services(f"{LABEL_POOL}={self.ctx.pool_name}")
        found = [self._row_instance(row) for row in rows]
        try:
            leases = await self._lease.others()
        except Exception as exc:
            raise self._error(exc, "list leases") from exc
        # Another run's lease is listed like an instance of that run: whoever reaps the run's
        # services (only once it provably stopped) removes its lease too.
        found.extend(
            Instance(
                id=lease.name,
                backend=self.name,
                endpoint=Endpoint("", 0),
                owner_id=lease.owner,
                meta={"marker": "lease", "config": lease.name},  # reaped, not counted
                handle=lease,
            )
            for lease in leases
        )
        return found

    def _row_instance(self, row: dict[str, Any]) -> Instance:
        live = self._watch.instance(row["ID"])
        if live is not None:
            return live
        spec = row.get("Spec") or {}
        labels = spec.get("Labels") or {}
        name = str(spec.get("Name", row["ID"]))
        return Instance(
            id=labels.get(LABEL_INSTANCE, name),
            backend=self.name,
            endpoint=Endpoint("", 0),  # not ours to route to: only to reap
            owner_id=labels.get(LABEL_OWNER, ""),
            meta={"service": name},
            handle=Service(row["ID"], name),
        )

    async def _services(self, label: str) -> Rows:
        try:
            rows: Rows = await self._threads.call(
                self._engine.client.api.services, filters={"label": label}
            )
        except Exception as exc:
            raise self._error(exc, "list services") from exc
        return rows

    async def alive(self, instance: Instance) -> bool:
        svc = instance.handle
        if not isinstance(svc, Service) or self._engine.client is None:
            return False
        if self._watch.is_dead(svc.id):
            return False
        try:
            task = await self._threads.call(self._engine.client.api.inspect_task, svc.task_id)
        except Exception:
            return False
        return bool((task.get("Status") or {}).get("State") == "running")

    async def heartbeat(self) -> None:
        await self._lease.beat()

    async def leases(self) -> dict[str, str] | None:
        return await self._lease.all()

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._parked.refill.stop()
        # Starts in flight finish (their services are swept below); the rest stop.
        await self._starts.join()
        await self._tasks.aclose()
        # A cancelled refill's `service create` may still run in its thread: let it land,
        # so the sweep below sees the service it makes.
        await self._threads.drain(within=60)
        if self._engine.client is not None:
            try:
                mine = await self._services(f"{LABEL_OWNER}={self.ctx.owner_id}")
            except BackendError as exc:
                log.warning("could not sweep this run's services: %s", exc)
                mine = []
            gone = [Service(r["ID"], str((r.get("Spec") or {}).get("Name", ""))) for r in mine]
            await asyncio.gather(
                *(self._remove(s, "shutdown") for s in gone),
                self._lease.drop(),
                return_exceptions=True,
            )
        await self._threads.drain(within=60)
        if self._session is not None:
            await self._session.close()
        await self._parked.aclose()
        self._nodes.close()
        self._engine.close()
        self._threads.shutdown()

    def _died(self, dead: Watched, reason: str) -> None:
        if self._parked.died(dead.instance.id):
            return
        if reason == "exited:137":  # a SIGKILL: the OOM killer's, if the node's engine says so
            self._tasks.spawn(self._killed(dead), f"death:{dead.instance.id}")
            return
        # Looked up on each death: the pool sets ctx.on_death after the backend is made.
        self.ctx.on_death(dead.instance.id, reason)

    async def _killed(self, dead: Watched) -> None:
        reason = "exited:137"
        try:
            engine = await self._nodes.engine(dead.service.node_id)
            if engine is not None:
                attrs = await self._threads.call(
                    engine.client.api.inspect_container, dead.service.container_id
                )
                if (attrs.get("State") or {}).get("OOMKilled"):
                    reason = "oom"
        except Exception as exc:  # gone already, node unreachable: the exit code stands
            log.debug("OOM check of %s: %r", dead.service.name, exc)
        self.ctx.on_death(dead.instance.id, reason)

    def _error(self, exc: Exception, what: str) -> BackendError:
        err = translate(exc, self._engine.url, what)
        if isinstance(err, BackendUnavailable):
            self._engine.mark_down(err)  # down_reason until the task watch's ping answers
        return err
