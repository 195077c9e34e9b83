"""Find what a pool left behind by reading /proc/<pid>/environ: the template, forked
children (labelled in place, see _procfs.role_slot) and exec'd commands."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from forkproxy.backends.process import _procfs

POOL_VAR = "FORKPROXY_POOL"
OWNER_VAR = "FORKPROXY_OWNER"
INSTANCE_VAR = "FORKPROXY_INSTANCE"


@dataclass(frozen=True)
class Found:
    pid: int
    # "template" | "fork" | "exec" | "spare" (forked ahead, no instance yet) | "zygote"
    kind: str
    instance_id: str
    owner: str
    port: int = 0
    ppid: int = 0


def template_id(pid: int) -> str:
    return f"template-{pid}"


def unlabelled_id(pid: int) -> str:
    return f"fork-{pid}"


def classify(pid: int, env: dict[str, str]) -> Found | None:
    role = env.get(_procfs.ROLE_VAR, "").strip()
    owner = env.get(OWNER_VAR, "")
    if role == _procfs.ROLE_TEMPLATE:
        return Found(pid, "template", template_id(pid), owner)
    if role == _procfs.ROLE_ZYGOTE:
        return Found(pid, "zygote", f"zygote-{pid}", owner)
    if role == _procfs.ROLE_SPARE:
        return Found(pid, "spare", f"spare-{pid}", owner)
    if role.startswith(_procfs.ROLE_FORK_PREFIX):
        return Found(pid, "fork", role[len(_procfs.ROLE_FORK_PREFIX) :], owner)
    if role == _procfs.ROLE_EXEC and env.get(INSTANCE_VAR):
        port = env.get("PORT", "0")
        return Found(pid, "exec", env[INSTANCE_VAR], owner, int(port) if port.isdigit() else 0)
    return None


def scan(pool: str) -> list[Found]:
    """Every live process of `pool`, one per instance (an instance's own children,
    which inherit its environment, are folded into it). Blocking: run in a thread."""
    found: dict[int, Found] = {}
    parents: dict[int, int] = {}
    for pid in _procfs.all_pids():
        env = _procfs.read_environ(pid)
        if not env or env.get(POOL_VAR) != pool:
            continue
        state = _procfs.proc_state(pid)
        if state is None or state[0] in ("Z", "X"):
            continue
        item = classify(pid, env)
        if item is not None:
            found[pid] = item
            parents[pid] = state[1]
    result = []
    for pid, item in found.items():
        parent = found.get(parents[pid])
        if parent is not None and parent.instance_id == item.instance_id:
            continue  # a process the instance spawned itself
        if parent is not None and item.kind == "template" and parent.kind == "template":
            # A fork that has not relabelled itself yet (it is microseconds old).
            item = Found(pid, "fork", unlabelled_id(pid), item.owner)
        result.append(dataclasses.replace(item, ppid=parents[pid]))
    return sorted(result, key=lambda f: f.pid)


def zygotes() -> list[Found]:
    """Every fork-mode zygote on this host, whichever proxy owns it (it belongs to no pool:
    its pool label is blank). Blocking: run in a thread."""
    result = []
    for pid in _procfs.all_pids():
        env = _procfs.read_environ(pid)
        if not env or env.get(_procfs.ROLE_VAR, "").strip() != _procfs.ROLE_ZYGOTE:
            continue
        if _procfs.is_running(pid) and (item := classify(pid, env)) is not None:
            result.append(item)
    return result
