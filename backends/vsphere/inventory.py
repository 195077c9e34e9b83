"""Finding things in the vCenter inventory for the vsphere backend: the datacenter, the
parent VM, its snapshot, placement objects, and the clones this pool owns. Blocking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.vsphere.config import VsphereConfig
from forkproxy.backends.vsphere.sdk import vim, vmodl

# extraConfig keys every clone carries; the pool key is what list() and the guard trust.
KEY_MANAGED = "guestinfo.forkproxy.managed"
KEY_POOL = "guestinfo.forkproxy.pool"
KEY_OWNER = "guestinfo.forkproxy.owner"
KEY_INSTANCE = "guestinfo.forkproxy.instance_id"
KEY_IP = "guestinfo.forkproxy.ip"
KEY_HOSTNAME = "guestinfo.hostname"


@dataclass
class World:
    """What prepare() resolved once: managed object references bound to the session."""

    datacenter: Any
    parent: Any
    snapshot: Any  # vim.vm.Snapshot in linked mode, else None
    folder: Any
    pool: Any  # vim.ResourcePool or None (the parent's)
    host: Any  # vim.HostSystem or None
    datastore: Any  # vim.Datastore or None
    parent_ip: str | None = None  # an Instant Clone may report it until its guest re-networks


def usable_ip(ip: object, parent_ip: str | None) -> bool:
    """A clone's guest IP we can route to: not yet-unset, not the parent's (stale Tools state
    right after an Instant Clone), not link-local."""
    if not isinstance(ip, str) or not ip or ip == parent_ip:
        return False
    return not ip.lower().startswith(("fe80:", "169.254."))


@dataclass
class VmRow:
    vm: Any
    name: str
    extra: dict[str, str]
    ip: str | None
    power: str


def _container_view(content: Any, root: Any, kind: type) -> Any:
    return content.viewManager.CreateContainerView(root, [kind], True)


def retrieve(content: Any, root: Any, kind: type, props: list[str]) -> list[Any]:
    """ObjectContents of every `kind` under root: one view, one RetrievePropertiesEx."""
    view = _container_view(content, root, kind)
    try:
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[pc.TraversalSpec(path="view", skip=False, type=type(view))],
                )
            ],
            propSet=[pc.PropertySpec(type=kind, pathSet=props)],
        )
        out: list[Any] = []
        result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        while result is not None:
            out.extend(result.objects or [])
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return out
    finally:
        view.DestroyView()


def _props(obj: Any) -> dict[str, Any]:
    for missing in obj.missingSet or []:
        # A dead session can surface as per-property faults rather than a call fault;
        # raise it so the session logs in again instead of reading empty properties.
        if isinstance(missing.fault, vim.fault.NotAuthenticated):
            raise missing.fault
    return {p.name: p.val for p in obj.propSet or []}


def extra_config(options: Any) -> dict[str, str]:
    return {o.key: str(o.value) for o in options or [] if o is not None}


def vm_rows(content: Any, datacenter: Any) -> list[VmRow]:
    rows = []
    props = ["name", "config.extraConfig", "guest.ipAddress", "runtime.powerState"]
    for obj in retrieve(content, datacenter.vmFolder, vim.VirtualMachine, props):
        p = _props(obj)
        rows.append(
            VmRow(
                vm=obj.obj,
                name=str(p.get("name", "")),
                extra=extra_config(p.get("config.extraConfig")),
                ip=p.get("guest.ipAddress") or None,
                power=str(p.get("runtime.powerState", "")),
            )
        )
    return rows


def vm_row(content: Any, vm: Any) -> VmRow | None:
    """One VM's guard facts in one call; None when it no longer exists."""
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=vm, skip=False)],
        propSet=[
            pc.PropertySpec(
                type=vim.VirtualMachine,
                pathSet=["name", "config.extraConfig", "guest.ipAddress", "runtime.powerState"],
            )
        ],
    )
    try:
        result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
    except vmodl.fault.ManagedObjectNotFound:
        return None
    if result is None or not result.objects:
        return None
    p = _props(result.objects[0])
    return VmRow(
        vm=vm,
        name=str(p.get("name", "")),
        extra=extra_config(p.get("config.extraConfig")),
        ip=p.get("guest.ipAddress") or None,
        power=str(p.get("runtime.powerState", "")),
    )


def _by_name(content: Any, root: Any, kind: type, name: str) -> Any:
    for obj in retrieve(content, root, kind, ["name"]):
        if _props(obj).get("name") == name:
            return obj.obj
    return None


def _by_path_or_name(content: Any, dc: Any, base: str, kind: type, value: str) -> Any:
    """An inventory path ("DC0/vm/a/b", or "a/b" under the datacenter's `base` folder)
    or a plain name searched under that folder."""
    index = content.searchIndex
    if "/" in value:
        found = index.FindByInventoryPath(value.strip("/"))
        if found is None:
            found = index.FindByInventoryPath(f"{dc.name}/{base}/{value.strip('/')}")
        return found if isinstance(found, kind) else None
    root = getattr(dc, f"{base}Folder")
    return _by_name(content, root, kind, value)


def _find_snapshot(tree: Any, name: str) -> Any:
    for node in tree or []:
        if node.name == name:
            return node.snapshot
        found = _find_snapshot(node.childSnapshotList, name)
        if found is not None:
            return found
    return None


def _snapshot_names(tree: Any) -> list[str]:
    names: list[str] = []
    for node in tree or []:
        names.append(node.name)
        names.extend(_snapshot_names(node.childSnapshotList))
    return names


def resolve(content: Any, cfg: VsphereConfig) -> World:
    """Validate the config against the inventory once; BackendConfigError names what is missing."""
    dcs = [o.obj for o in retrieve(content, content.rootFolder, vim.Datacenter, ["name"])]
    if cfg.datacenter:
        dc = next((d for d in dcs if d.name == cfg.datacenter), None)
        if dc is None:
            names = ", ".join(sorted(d.name for d in dcs)) or "(none)"
            raise BackendConfigError(f"datacenter {cfg.datacenter!r} not found (have: {names})")
    elif len(dcs) == 1:
        dc = dcs[0]
    else:
        names = ", ".join(sorted(d.name for d in dcs)) or "(none)"
        raise BackendConfigError(f"set backend.datacenter: vCenter has several ({names})")

    parent = _by_path_or_name(content, dc, "vm", vim.VirtualMachine, cfg.parent_vm)
    if parent is None:
        raise BackendConfigError(
            f"parent VM {cfg.parent_vm!r} not found in datacenter {dc.name!r} (backend.parent_vm)"
        )
    snapshot = None
    if cfg.mode == "instant":
        state = parent.runtime.powerState
        if state != "poweredOn":
            raise BackendConfigError(
                f"parent VM {cfg.parent_vm!r} is {state}: Instant Clone needs a running parent"
            )
    else:
        tree = parent.snapshot.rootSnapshotList if parent.snapshot else []
        snapshot = _find_snapshot(tree, cfg.snapshot or "")
        if snapshot is None:
            names = ", ".join(_snapshot_names(tree)) or "(none)"
            raise BackendConfigError(
                f"snapshot {cfg.snapshot!r} not found on parent VM {cfg.parent_vm!r} (has: {names})"
            )

    pl = cfg.placement
    folder = parent.parent
    if pl.folder:
        folder = _by_path_or_name(content, dc, "vm", vim.Folder, pl.folder)
        if folder is None:
            raise BackendConfigError(f"folder {pl.folder!r} not found in datacenter {dc.name!r}")
    pool = host = datastore = None
    if pl.resource_pool:
        pool = _by_path_or_name(content, dc, "host", vim.ResourcePool, pl.resource_pool)
        if pool is None:
            raise BackendConfigError(
                f"resource pool {pl.resource_pool!r} not found in datacenter {dc.name!r}"
            )
    if pl.cluster:
        cluster = _by_path_or_name(content, dc, "host", vim.ClusterComputeResource, pl.cluster)
        if cluster is None:
            raise BackendConfigError(f"cluster {pl.cluster!r} not found in datacenter {dc.name!r}")
        pool = cluster.resourcePool
    if pl.host:
        host = _by_path_or_name(content, dc, "host", vim.HostSystem, pl.host)
        if host is None:
            raise BackendConfigError(f"host {pl.host!r} not found in datacenter {dc.name!r}")
        if pool is None:
            pool = host.parent.resourcePool
    if pl.datastore:
        datastore = _by_name(content, dc.datastoreFolder, vim.Datastore, pl.datastore)
        if datastore is None:
            raise BackendConfigError(
                f"datastore {pl.datastore!r} not found in datacenter {dc.name!r}"
            )
    parent_ip = parent.guest.ipAddress if cfg.mode == "instant" else None
    return World(dc, parent, snapshot, folder, pool, host, datastore, parent_ip or None)
