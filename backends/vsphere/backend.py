"""The vsphere backend: an instance is an Instant Clone (or a linked clone) of a running
parent VM, named and marked as this pool's, identified through guestinfo.* extraConfig keys.

Every pyVmomi call runs in a thread through one shared Session; waits use a private
PropertyCollector (WaitForUpdatesEx), never sleep loops. Helpers live beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from backends.base import Backend, BackendContext, Endpoint, Instance
from backends.errors import BackendError, BackendUnavailable, StartError, StopError
from backends.vsphere import lease
from backends.vsphere.config import VsphereConfig
from backends.vsphere.guest import probe, start_container
from backends.vsphere.inventory import (
    KEY_HOSTNAME,
    KEY_INSTANCE,
    KEY_IP,
    KEY_MANAGED,
    KEY_OWNER,
    KEY_POOL,
    VmRow,
    World,
    resolve,
    usable_ip,
    vm_row,
    vm_rows,
)
from backends.vsphere.sdk import vim, vmodl
from backends.vsphere.session import Session
from backends.vsphere.wait import WaitTimeout, Watcher, wait_task
from backends.vsphere.watch import DeathWatch

__all__ = ["Clone", "VsphereBackend"]

log = logging.getLogger("forkproxy.backend.vsphere")
_HOSTNAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


@dataclass(eq=False)
class Clone:
    """Instance.handle: the clone VM (bound to the shared session) and its facts."""

    vm: Any
    name: str
    ip: str | None = None  # the static address from ip_range, if any


@dataclass(eq=False)
class _Pending:
    """A start in flight, filled in by its thread so a cancelled start can be cleaned up."""

    task: Any = None
    clone: Any = None
    phases: dict[str, float] = field(default_factory=dict)


def fault_text(exc: BaseException) -> str:
    if isinstance(exc, vmodl.MethodFault):
        msg = exc.msg or ", ".join(m.message for m in exc.faultMessage or [] if m.message)
        return f"{type(exc).__name__}{': ' + msg if msg else ''}"
    return f"{type(exc).__name__}: {exc}"


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
        self._cleanups: set[asyncio.Task[None]] = set()
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
        for task in list(self._cleanups):
            with contextlib.suppress(Exception):
                await task
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

    # -- identity --------------------------------------------------------------------

    def _hostname(self, instance_id: str) -> str:
        return _HOSTNAME_UNSAFE.sub("-", f"{self.cfg.name_prefix}{instance_id}".lower())[:63]

    def _extra_config(self, instance_id: str, name: str, ip: str | None) -> dict[str, str]:
        hostname = self._hostname(instance_id)
        fields = {
            "instance_id": instance_id,
            "hostname": hostname,
            "name": name,
            "index": str(next(self._index)),
            "pool": self.ctx.pool_name,
            "ip": ip or "",
        }
        extra = {
            KEY_MANAGED: "true",
            KEY_POOL: self.ctx.pool_name,
            KEY_OWNER: self.ctx.owner_id,
            KEY_INSTANCE: instance_id,
            KEY_HOSTNAME: hostname,
        }
        if ip:
            extra[KEY_IP] = ip
        for key, template in self.cfg.guestinfo.items():
            full = key if key.startswith("guestinfo.") else f"guestinfo.{key}"
            extra[full] = template.format(**fields)
        return extra

    # -- start -------------------------------------------------------------------------

    def _submit(self, content: Any, world: World, name: str, extra: dict[str, str]) -> Any:
        options = [vim.option.OptionValue(key=k, value=v) for k, v in extra.items()]
        location = vim.vm.RelocateSpec(
            folder=world.folder, pool=world.pool, host=world.host, datastore=world.datastore
        )
        if self.cfg.mode == "instant":
            spec = vim.vm.InstantCloneSpec(name=name, location=location, config=options)
            return world.parent.InstantClone_Task(spec=spec)
        location.diskMoveType = "createNewChildDiskBacking"
        clone_spec = vim.vm.CloneSpec(
            location=location,
            powerOn=True,
            template=False,
            snapshot=world.snapshot,
            config=vim.vm.ConfigSpec(extraConfig=options),
        )
        return world.parent.CloneVM_Task(folder=world.folder, name=name, spec=clone_spec)

    def _clone_sync(
        self, content: Any, world: World, name: str, extra: dict[str, str], p: _Pending
    ) -> str:
        """Submit (once), wait for the task, then for the guest IP. Safe to repeat after a
        re-login: a submitted task is not submitted again."""
        t0 = time.monotonic()
        if p.task is None:
            p.task = self._submit(content, world, name, extra)
        with Watcher(content) as w:
            try:
                p.clone = wait_task(w, p.task, self.cfg.clone_timeout)
            except WaitTimeout as exc:
                raise StartError(
                    f"clone task for {name} did not finish in {self.cfg.clone_timeout:g}s",
                    reason="clone_fault",
                ) from exc
            t1 = time.monotonic()
            p.phases["clone_task"] = t1 - t0
            w.watch(p.clone, ["guest.ipAddress", "runtime.powerState"])
            try:
                w.until(
                    lambda w: usable_ip(w.get(p.clone, "guest.ipAddress"), world.parent_ip),
                    self.cfg.guest_ip_timeout,
                )
            except WaitTimeout as exc:
                power = exc.values.get(f"{p.clone._moId}.runtime.powerState", "unknown")
                raise StartError(
                    f"clone {name} reported no guest IP within {self.cfg.guest_ip_timeout:g}s "
                    f"(power state {power})",
                    reason="guest_ip_timeout",
                ) from exc
            p.phases["guest_ip"] = time.monotonic() - t1
            return str(w.get(p.clone, "guest.ipAddress"))

    async def start(self, instance_id: str) -> Instance:
        world = await self._world()
        name = f"{self.cfg.name_prefix}{instance_id}"
        ip = self._ips_free.pop(0) if self._ips_free else None
        if self.cfg.ip_range and ip is None:
            raise StartError("ip_range exhausted: every address is in use", reason="ip_exhausted")
        extra = self._extra_config(instance_id, name, ip)
        pending = _Pending()
        loop = asyncio.get_running_loop()
        work: asyncio.Future[str] | None = None
        try:
            async with self._slots:
                work = loop.run_in_executor(
                    None,
                    self.session.call,
                    lambda content: self._clone_sync(content, world, name, extra, pending),
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
        self, pending: _Pending, name: str, ip: str | None, work: asyncio.Future[str] | None
    ) -> None:
        """A failed or cancelled start: destroy whatever it created, in an owned task."""

        async def cleanup() -> None:
            try:
                if work is not None:
                    with contextlib.suppress(BaseException):
                        await work  # the clone thread may still be submitting
                if pending.task is not None:
                    await self.session.run(
                        lambda content: self._cleanup_sync(content, pending, name)
                    )
            except Exception as exc:
                log.warning("vsphere: could not remove the failed clone %s: %s", name, exc)
            finally:
                if ip:
                    self._ips_free.append(ip)

        task = asyncio.get_running_loop().create_task(cleanup(), name=f"vsphere-cleanup-{name}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    def _cleanup_sync(self, content: Any, pending: _Pending, name: str) -> None:
        if pending.clone is None:
            with Watcher(content) as w, contextlib.suppress(vmodl.MethodFault):
                pending.clone = wait_task(w, pending.task, self.cfg.clone_timeout)
        if pending.clone is not None:
            self._destroy_sync(content, pending.clone)
            log.info("vsphere: removed the clone %s of a failed start", name)

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

    def _destroy_sync(self, content: Any, vm: Any) -> bool:
        """Guard, power off (if on), destroy. False when the VM was already gone."""
        row = vm_row(content, vm)
        if row is None:
            return False
        self._check_owned(row)
        try:
            with Watcher(content) as w:
                if row.power != "poweredOff":
                    with contextlib.suppress(vim.fault.InvalidPowerState):
                        wait_task(w, vm.PowerOffVM_Task(), 120)
                wait_task(w, vm.Destroy_Task(), 120)
        except vmodl.fault.ManagedObjectNotFound:
            return False
        return True

    async def stop(self, instance: Instance, reason: str) -> None:
        clone = instance.handle
        if not isinstance(clone, Clone):
            raise StopError(f"instance {instance.id} has no vsphere handle", reason="not_owned")
        self._stopping.add(instance.id)
        if self._watch is not None:
            self._watch.remove(instance.id)
        try:
            await self.session.run(lambda content: self._destroy_sync(content, clone.vm))
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
            if (
                row.extra.get(KEY_MANAGED) != "true"
                or row.extra.get(KEY_POOL) != self.ctx.pool_name
            ):
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
