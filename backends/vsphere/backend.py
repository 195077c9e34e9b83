"""The vsphere backend: an instance is an Instant Clone (or a linked clone) of a running
parent VM, named and marked as this pool's, identified through guestinfo.* extraConfig keys.

Every pyVmomi call runs in a thread through one shared Session; waits use a private
PropertyCollector (WaitForUpdatesEx), never sleep loops. Helpers live beside it: clone.py
makes and unmakes one clone (blocking), guest.py works inside one, watch.py sees deaths.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from forkproxy.backends.base import Backend, BackendContext, Endpoint, Instance
from forkproxy.backends.errors import BackendError, BackendUnavailable, StartError, StopError
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.backends.vsphere import lease
from forkproxy.backends.vsphere.clone import (
    Clone,
    Pending,
    destroy,
    extra_config,
    fault_text,
    make,
    remove_failed,
)
from forkproxy.backends.vsphere.config import VsphereConfig
from forkproxy.backends.vsphere.guest import probe, start_container
from forkproxy.backends.vsphere.inventory import (
    KEY_INSTANCE,
    KEY_IP,
    KEY_MANAGED,
    KEY_OWNER,
    KEY_POOL,
    VmRow,
    World,
    resolve,
    vm_row,
    vm_rows,
)
from forkproxy.backends.vsphere.sdk import vim, vmodl
from forkproxy.backends.vsphere.session import Session
from forkproxy.backends.vsphere.watch import DeathWatch

__all__ = ["Clone", "VsphereBackend"]

log = logging.getLogger("forkproxy.backend.vsphere")


class VsphereBackend(Backend):
    name = "vsphere"

    def __init__(self, config: VsphereConfig, ctx: BackendContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.session = Session(config)
        self.world: World | None = None
        self._slots = asyncio.Semaphore(config.max_concurrent_clones)
        self._index = itertools.count()
        self._ips_free = config.ip_pool()
        self._live: dict[str, Instance] = {}
        self._stopping: set[str] = set()
        self._cleanups = TaskSet("vsphere-cleanup", log)  # a failed start's leftovers
        self._watch: DeathWatch | None = None
        self._beats = itertools.count()

    def __repr__(self) -> str:
        return (
            f"<VsphereBackend {self.cfg.mode} parent={self.cfg.parent_vm!r} "
            f"{len(self._live)} live, {len(self._stopping)} stopping>"
        )

    # -- lifecycle -------------------------------------------------------------------

    async def prepare(self) -> None:
        self.world = await self.session.run(lambda content: resolve(content, self.cfg))
        if self.cfg.container is not None:
            try:
                import docker  # noqa: F401 - checked now rather than at the first clone
            except ImportError as exc:
                raise BackendError(
                    "backend.container needs the docker SDK (pip install docker)"
                ) from exc
        await self.heartbeat()  # the lease exists before the first clone does
        if self.cfg.watch_deaths and self._watch is None:
            self._watch = DeathWatch(self.session, self._on_watch_event)
            self._watch.start()
        log.info(
            "vsphere: parent %s ready (%s mode), clones named %s*",
            self.cfg.parent_vm,
            self.cfg.mode,
            self.cfg.name_prefix,
        )

    async def _world(self) -> World:
        if self.world is None:
            await self.prepare()
        assert self.world is not None
        return self.world

    async def aclose(self) -> None:
        """Destroy this run's clones (bounded like starts), finish cleanups, log out."""
        live = list(self._live.values())
        if live:

            async def stop_one(instance: Instance) -> None:
                async with self._slots:
                    try:
                        await self.stop(instance, "shutdown")
                    except BackendError as exc:
                        log.warning("vsphere: shutdown could not destroy %s: %s", instance.id, exc)

            await asyncio.gather(*(stop_one(i) for i in live))
        await self._cleanups.join()  # each removes what a failed start made: let it finish
        if self._watch is not None:
            await self._watch.aclose()
            self._watch = None
        if self.world is not None:
            pool, owner = self.ctx.pool_name, self.ctx.owner_id
            try:
                await self.session.run(lambda content: lease.drop(content, pool, owner))
            except (vmodl.MethodFault, OSError, BackendError) as exc:
                log.warning("vsphere: could not drop this run's lease: %s", fault_text(exc))
        await asyncio.to_thread(self.session.close)

    # -- start -------------------------------------------------------------------------

    async def start(self, instance_id: str) -> Instance:
        world = await self._world()
        name = f"{self.cfg.name_prefix}{instance_id}"
        ip = self._ips_free.pop(0) if self._ips_free else None
        if self.cfg.ip_range and ip is None:
            raise StartError("ip_range exhausted: every address is in use", reason="ip_exhausted")
        extra = extra_config(self.cfg, self.ctx, instance_id, name, ip, next(self._index))
        pending = Pending()
        loop = asyncio.get_running_loop()
        work: asyncio.Future[str] | None = None
        try:
            async with self._slots:
                work = loop.run_in_executor(
                    None,
                    self.session.call,
                    lambda content: make(content, self.cfg, world, name, extra, pending),
                )
                # shield: a cancelled start leaves the thread running; cleanup awaits it.
                guest_ip = await asyncio.shield(work)
            instance = Instance(
                id=instance_id,
                backend=self.name,
                endpoint=Endpoint(guest_ip, self.cfg.app_port),
                owner_id=self.ctx.owner_id,
                meta={"vm": name, "moref": pending.clone._moId, "guest_ip": guest_ip},
                handle=Clone(pending.clone, name, ip),
                phases=pending.phases,
            )
            if self.cfg.container is not None:
                labels = self.ctx.labels(instance_id)
                await start_container(instance, self.cfg.container, name, labels)
            if self.cfg.readiness_path is not None:
                await probe(instance, self.cfg.readiness_path, self.ctx.start_timeout)
        except BaseException as exc:
            self._abandon(pending, name, ip, work)
            if isinstance(exc, BackendError | asyncio.CancelledError):
                raise
            if isinstance(exc, vim.fault.NotAuthenticated):
                raise StartError(
                    f"clone {name}: vCenter session not authenticated after re-login",
                    reason="not_authenticated",
                ) from exc
            if isinstance(exc, vmodl.MethodFault):
                raise StartError(f"clone {name}: {fault_text(exc)}", reason="clone_fault") from exc
            if isinstance(exc, OSError):
                raise BackendUnavailable(
                    f"vCenter {self.cfg.host} unreachable during clone {name}: {exc}",
                    reason="vcenter_unreachable",
                ) from exc
            raise
        self._live[instance_id] = instance
        if self._watch is not None:
            self._watch.add(instance_id, pending.clone)
        log.info(
            "vsphere: %s up at %s (%s)",
            name,
            instance.endpoint.url,
            ", ".join(f"{k} {v * 1000:.0f}ms" for k, v in instance.phases.items()),
        )
        return instance

    def _abandon(
        self, pending: Pending, name: str, ip: str | None, work: asyncio.Future[str] | None
    ) -> None:
        """A failed or cancelled start: destroy whatever it created, in an owned task."""

        async def cleanup() -> None:
            try:
                if work is not None:
                    with contextlib.suppress(BaseException):
                        await work  # the clone thread may still be submitting
                if pending.task is not None:
                    await self.session.run(
                        lambda content: remove_failed(
                            content, self.cfg, pending, name, self._check_owned
                        )
                    )
            except Exception as exc:
                log.warning("vsphere: could not remove the failed clone %s: %s", name, exc)
            finally:
                if ip:
                    self._ips_free.append(ip)

        self._cleanups.spawn(cleanup(), f"vsphere-cleanup-{name}")

    # -- stop ----------------------------------------------------------------------------

    def _marked(self, row: VmRow) -> bool:
        return (
            row.extra.get(KEY_MANAGED) == "true" and row.extra.get(KEY_POOL) == self.ctx.pool_name
        )

    def _check_owned(self, row: VmRow) -> None:
        """The guard: never power off or destroy a VM this pool did not create."""
        world = self.world
        if world is not None and row.vm._moId == world.parent._moId:
            raise StopError(
                f"refusing to power off or destroy {row.name!r}: it is the parent VM",
                reason="not_owned",
            )
        if not row.name.startswith(self.cfg.name_prefix):
            raise StopError(
                f"refusing to power off or destroy {row.name!r}: its name lacks the prefix "
                f"{self.cfg.name_prefix!r}",
                reason="not_owned",
            )
        if not self._marked(row):
            raise StopError(
                f"refusing to power off or destroy {row.name!r}: it lacks the marker "
                f"{KEY_POOL}={self.ctx.pool_name}",
                reason="not_owned",
            )

    async def stop(self, instance: Instance, reason: str) -> None:
        clone = instance.handle
        if not isinstance(clone, Clone):
            raise StopError(f"instance {instance.id} has no vsphere handle", reason="not_owned")
        self._stopping.add(instance.id)
        if self._watch is not None:
            self._watch.remove(instance.id)
        try:
            await self.session.run(lambda content: destroy(content, clone.vm, self._check_owned))
        except BackendError:
            raise
        except vmodl.MethodFault as exc:
            raise StopError(f"destroy {clone.name}: {fault_text(exc)}") from exc
        except OSError as exc:
            raise BackendUnavailable(
                f"vCenter {self.cfg.host} unreachable while destroying {clone.name}: {exc}",
                reason="vcenter_unreachable",
            ) from exc
        finally:
            self._stopping.discard(instance.id)
        self._live.pop(instance.id, None)
        if clone.ip and clone.ip not in self._ips_free:
            self._ips_free.append(clone.ip)
        log.info("vsphere: destroyed %s (%s)", clone.name, reason)

    # -- list / alive --------------------------------------------------------------------

    async def list(self) -> list[Instance]:
        world = await self._world()
        rows = await self.session.run(lambda content: vm_rows(content, world.datacenter))
        out = []
        for row in rows:
            if not row.name.startswith(self.cfg.name_prefix):
                continue
            if not self._marked(row):
                continue
            if row.vm._moId == world.parent._moId:
                continue
            ip = row.extra.get(KEY_IP) or None
            if ip and ip in self._ips_free:
                self._ips_free.remove(ip)  # an earlier run's clone still holds it
            instance_id = row.extra.get(KEY_INSTANCE) or row.name[len(self.cfg.name_prefix) :]
            out.append(
                Instance(
                    id=instance_id,
                    backend=self.name,
                    endpoint=Endpoint(row.ip or "", self.cfg.app_port),
                    owner_id=row.extra.get(KEY_OWNER, ""),
                    meta={"vm": row.name, "moref": row.vm._moId, "power": row.power},
                    handle=Clone(row.vm, row.name, ip),
                )
            )
        return out

    async def heartbeat(self) -> None:
        world = await self._world()
        value = str(next(self._beats))
        pool, owner = self.ctx.pool_name, self.ctx.owner_id
        try:
            await self.session.run(
                lambda content: lease.beat(content, world.parent, pool, owner, value)
            )
        except (vmodl.MethodFault, OSError) as exc:
            raise BackendError(f"vsphere lease: {fault_text(exc)}") from exc

    async def leases(self) -> dict[str, str] | None:
        world = await self._world()
        pool = self.ctx.pool_name
        try:
            return await self.session.run(lambda content: lease.leases(content, world.parent, pool))
        except (vmodl.MethodFault, OSError) as exc:
            raise BackendError(f"vsphere leases: {fault_text(exc)}") from exc

    async def alive(self, instance: Instance) -> bool:
        clone = instance.handle
        if not isinstance(clone, Clone):
            return False
        try:
            row = await self.session.run(lambda content: vm_row(content, clone.vm))
        except (vmodl.MethodFault, OSError):
            return True  # cannot tell: do not kill it on a vCenter hiccup
        return row is not None and row.power == "poweredOn"

    # -- deaths ----------------------------------------------------------------------------

    def _on_watch_event(self, instance_id: str, reason: str) -> None:
        """Called on the loop by DeathWatch: a clone powered off or vanished under us."""
        if instance_id in self._stopping or instance_id not in self._live:
            return
        self._live.pop(instance_id, None)
        log.warning("vsphere: instance %s died (%s)", instance_id, reason)
        self.ctx.on_death(instance_id, reason)
