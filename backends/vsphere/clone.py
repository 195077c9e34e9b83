"""One clone as the vsphere backend makes and unmakes it, blocking (run these through the
Session, in its thread): the identity it carries in guestinfo.* keys, the clone task and
the wait for its guest IP, and the removal of a clone (guarded by the caller's check)."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from forkproxy.backends.base import BackendContext
from forkproxy.backends.errors import StartError
from forkproxy.backends.vsphere.config import VsphereConfig
from forkproxy.backends.vsphere.inventory import (
    KEY_HOSTNAME,
    KEY_INSTANCE,
    KEY_IP,
    KEY_MANAGED,
    KEY_OWNER,
    KEY_POOL,
    VmRow,
    World,
    usable_ip,
    vm_row,
)
from forkproxy.backends.vsphere.sdk import vim, vmodl
from forkproxy.backends.vsphere.wait import WaitTimeout, Watcher, wait_task

log = logging.getLogger("forkproxy.backend.vsphere")
_HOSTNAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


@dataclass(eq=False)
class Clone:
    """Instance.handle: the clone VM (bound to the shared session) and its facts."""

    vm: Any
    name: str
    ip: str | None = None  # the static address from ip_range, if any


@dataclass(eq=False)
class Pending:
    """A start in flight, filled in by its thread so a cancelled start can be cleaned up."""

    task: Any = None
    clone: Any = None
    phases: dict[str, float] = field(default_factory=dict)


def fault_text(exc: BaseException) -> str:
    if isinstance(exc, vmodl.MethodFault):
        msg = exc.msg or ", ".join(m.message for m in exc.faultMessage or [] if m.message)
        return f"{type(exc).__name__}{': ' + msg if msg else ''}"
    return f"{type(exc).__name__}: {exc}"


# -- identity ------------------------------------------------------------------------


def hostname(cfg: VsphereConfig, instance_id: str) -> str:
    return _HOSTNAME_UNSAFE.sub("-", f"{cfg.name_prefix}{instance_id}".lower())[:63]


def extra_config(
    cfg: VsphereConfig, ctx: BackendContext, instance_id: str, name: str, ip: str | None, index: int
) -> dict[str, str]:
    """The guestinfo.* keys of a clone: this pool's marks, and [backend.guestinfo]'s own."""
    host = hostname(cfg, instance_id)
    fields = {
        "instance_id": instance_id,
        "hostname": host,
        "name": name,
        "index": str(index),
        "pool": ctx.pool_name,
        "ip": ip or "",
    }
    extra = {
        KEY_MANAGED: "true",
        KEY_POOL: ctx.pool_name,
        KEY_OWNER: ctx.owner_id,
        KEY_INSTANCE: instance_id,
        KEY_HOSTNAME: host,
    }
    if ip:
        extra[KEY_IP] = ip
    for key, template in cfg.guestinfo.items():
        full = key if key.startswith("guestinfo.") else f"guestinfo.{key}"
        extra[full] = template.format(**fields)
    return extra


# -- making one ----------------------------------------------------------------------


def _submit(cfg: VsphereConfig, world: World, name: str, extra: dict[str, str]) -> Any:
    options = [vim.option.OptionValue(key=k, value=v) for k, v in extra.items()]
    location = vim.vm.RelocateSpec(
        folder=world.folder, pool=world.pool, host=world.host, datastore=world.datastore
    )
    if cfg.mode == "instant":
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


def make(
    content: Any,
    cfg: VsphereConfig,
    world: World,
    name: str,
    extra: dict[str, str],
    p: Pending,
) -> str:
    """Submit (once), wait for the task, then for the guest IP; return the IP. Safe to
    repeat after a re-login: a submitted task is not submitted again."""
    t0 = time.monotonic()
    if p.task is None:
        p.task = _submit(cfg, world, name, extra)
    with Watcher(content) as w:
        try:
            p.clone = wait_task(w, p.task, cfg.clone_timeout)
        except WaitTimeout as exc:
            raise StartError(
                f"clone task for {name} did not finish in {cfg.clone_timeout:g}s",
                reason="clone_fault",
            ) from exc
        t1 = time.monotonic()
        p.phases["clone_task"] = t1 - t0
        w.watch(p.clone, ["guest.ipAddress", "runtime.powerState"])
        try:
            w.until(
                lambda w: usable_ip(w.get(p.clone, "guest.ipAddress"), world.parent_ip),
                cfg.guest_ip_timeout,
            )
        except WaitTimeout as exc:
            power = exc.values.get(f"{p.clone._moId}.runtime.powerState", "unknown")
            raise StartError(
                f"clone {name} reported no guest IP within {cfg.guest_ip_timeout:g}s "
                f"(power state {power})",
                reason="guest_ip_timeout",
            ) from exc
        p.phases["guest_ip"] = time.monotonic() - t1
        return str(w.get(p.clone, "guest.ipAddress"))


# -- unmaking one --------------------------------------------------------------------


def destroy(content: Any, vm: Any, check_owned: Callable[[VmRow], None]) -> bool:
    """check_owned (raises to refuse), power off (if on), destroy. False when the VM was
    already gone."""
    row = vm_row(content, vm)
    if row is None:
        return False
    check_owned(row)
    try:
        with Watcher(content) as w:
            if row.power != "poweredOff":
                with contextlib.suppress(vim.fault.InvalidPowerState):
                    wait_task(w, vm.PowerOffVM_Task(), 120)
            wait_task(w, vm.Destroy_Task(), 120)
    except vmodl.fault.ManagedObjectNotFound:
        return False
    return True


def remove_failed(
    content: Any,
    cfg: VsphereConfig,
    pending: Pending,
    name: str,
    check_owned: Callable[[VmRow], None],
) -> None:
    """What a failed or cancelled start made: its clone, once its task has one."""
    if pending.clone is None:
        with Watcher(content) as w, contextlib.suppress(vmodl.MethodFault):
            pending.clone = wait_task(w, pending.task, cfg.clone_timeout)
    if pending.clone is not None:
        destroy(content, pending.clone, check_owned)
        log.info("vsphere: removed the clone %s of a failed start", name)
