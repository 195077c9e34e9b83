"""Leases of the vsphere backend: one custom field per owner run, set on the parent VM
every heartbeat (a small SetField call), so replicas on other hosts see a run is alive.
Field names: forkproxy.lease.<pool>.<owner id>; the value is a beat counter. A clean stop
removes the field; a crashed run's field stays and simply stops changing. Blocking: run
these through Session.run."""

from __future__ import annotations

from typing import Any

from forkproxy.backends.vsphere.sdk import vim

_PREFIX = "forkproxy.lease."


def _name(pool: str, owner: str) -> str:
    return f"{_PREFIX}{pool}.{owner}"


def _key(content: Any, name: str) -> int | None:
    for field in content.customFieldsManager.field or []:
        if field.name == name:
            return int(field.key)
    return None


def beat(content: Any, parent: Any, pool: str, owner: str, value: str) -> None:
    cfm = content.customFieldsManager
    name = _name(pool, owner)
    key = _key(content, name)
    if key is None:
        key = int(cfm.AddCustomFieldDef(name=name, moType=vim.VirtualMachine).key)
    cfm.SetField(entity=parent, key=key, value=value)


def leases(content: Any, parent: Any, pool: str) -> dict[str, str]:
    """Owner id -> beat value of every lease of `pool` on the parent."""
    prefix = _name(pool, "")
    names = {
        int(f.key): f.name[len(prefix) :]
        for f in content.customFieldsManager.field or []
        if f.name.startswith(prefix)
    }
    return {
        names[int(v.key)]: str(v.value) for v in parent.customValue or [] if int(v.key) in names
    }


def drop(content: Any, pool: str, owner: str) -> None:
    key = _key(content, _name(pool, owner))
    if key is not None:
        content.customFieldsManager.RemoveCustomFieldDef(key=key)
