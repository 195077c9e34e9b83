"""The swarm backend: one Docker Swarm service with one replica per instance, placed by the
swarm's scheduler (constraints, spread preferences, resources), reached on its task's node
address and host-mode published port. Config keys: backends/swarm/config.py.

The parts it composes: services.py (the blocking Swarm calls), watch.py (deaths from task
states), lease.py (this run's lease for replicas on other hosts); from the docker backend
it reuses the engine client (backends/docker/engine.py) and its threads (threads.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from backends.base import (
    LABEL_INSTANCE,
    LABEL_OWNER,
    LABEL_POOL,
    Backend,
    BackendContext,
    Endpoint,
    Instance,
)
from backends.docker.engine import Engine, translate
from backends.docker.threads import Threads
from backends.errors import BackendConfigError, BackendError, BackendUnavailable, StartError
from backends.support.tasks import TaskSet
from backends.swarm import services
from backends.swarm.config import SwarmConfig
from backends.swarm.lease import Lease
from backends.swarm.services import Service
from backends.swarm.watch import TaskWatch

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
        self._starts = TaskSet("swarm-starts", log)  # finish on close: what they made is swept
        self._nodes: dict[str, str] = {}  # node id -> address its host-mode ports are on
        self._watch = TaskWatch(
            self._engine,
            self._threads,
            config.poll,
            f"{LABEL_OWNER}={ctx.owner_id}",
            on_death=self._died,
        )
        self._lease = Lease(self._engine, self._threads, ctx)

    def __repr__(self) -> str:
        return f"<SwarmBackend {len(self._watch)} live on {self._engine.url}>"

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
        await self._lease.beat()
        self._tasks.spawn(self._watch.run(), "swarm-tasks")

    async def start(self, instance_id: str) -> Instance:
        if self._closing:
            raise StartError("swarm backend is closing", reason="closing")
        # The pool wraps start() in a timeout: run the start as an owned task so a
        # cancelled caller cannot leak a service that is made a moment later.
        task = self._starts.spawn(self._start(instance_id), f"start:{instance_id}")
        if task is None:
            raise StartError("swarm backend is closing", reason="closing")
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._stop_orphan)
            raise

    def _stop_orphan(self, task: asyncio.Task[Instance]) -> None:
        if task.cancelled() or task.exception() is not None or self._closing:
            return
        inst = task.result()
        self._tasks.spawn(self.stop(inst, "abandoned"), f"stop:{inst.id}")

    async def _start(self, instance_id: str) -> Instance:
        name = services.service_name(self.ctx.pool_name, instance_id)
        env = {"FORKPROXY_INSTANCE_ID": instance_id, "FORKPROXY_POOL": self.ctx.pool_name}
        labels = self.ctx.labels(instance_id)
        t0 = time.monotonic()
        try:
            svc = await self._threads.call(
                services.create, self._engine, self.cfg, name, labels, env
            )
        except Exception as exc:
            raise self._error(exc, f"create service {name}") from exc
        t1 = time.monotonic()
        try:
            task = await self._threads.call(
                services.wait_running,
                self._engine,
                svc,
                t1 + self.ctx.start_timeout,
                min(self.cfg.poll, 0.02),
            )
            endpoint = Endpoint(
                await self._node_address(svc.node_id), services.published_port(task, self.cfg.port)
            )
        except BaseException as exc:
            await asyncio.shield(self._remove(svc, "failed start"))
            if isinstance(exc, Exception):
                err = self._error(exc, f"run service {name}")
                log.warning("%s", err)
                raise err from exc
            raise
        inst = Instance(
            id=instance_id,
            backend=self.name,
            endpoint=endpoint,
            owner_id=self.ctx.owner_id,
            meta={
                "service": svc.name,
                "node": svc.node_id[:12],
                "task": svc.task_id[:12],
                "image": self.cfg.image,
                "from": "create",
            },
            handle=svc,
            phases={"create": t1 - t0, "schedule": time.monotonic() - t1},
        )
        self._watch.add(inst, svc)
        return inst

    async def _node_address(self, node_id: str) -> str:
        if node_id not in self._nodes:
            self._nodes[node_id] = await self._threads.call(
                services.node_address, self._engine, node_id
            )
        return self._nodes[node_id]

    async def stop(self, instance: Instance, reason: str) -> None:
        svc = instance.handle
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
        return [self._row_instance(row) for row in rows]

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
        # Starts in flight finish (their services are swept below); the rest stop.
        await self._starts.join()
        await self._tasks.aclose()
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
        self._engine.close()
        self._threads.shutdown()

    def _died(self, instance_id: str, reason: str) -> None:
        # Looked up on each death: the pool sets ctx.on_death after the backend is made.
        self.ctx.on_death(instance_id, reason)

    def _error(self, exc: Exception, what: str) -> BackendError:
        return translate(exc, self._engine.url, what)
