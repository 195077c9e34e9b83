"""Owner ids that can be proven dead. Every proxy run is an owner; its id is stored on
everything it creates (label, env var, extraConfig) and carries where the run lives, so
another run on the same host can tell from /proc alone whether that owner has stopped.

    <hostname>-<token>_<space>_<pid>_<starttime>

`space` names the pid namespace on this boot (hash of boot_id and the pid namespace),
`starttime` is field 22 of /proc/<pid>/stat (clock ticks since boot): a recycled pid
has another start time, so a live sibling is never mistaken for a dead one."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    name: str  # <hostname>-<token>: what logs show
    space: str
    pid: int
    start: int

    def __str__(self) -> str:
        return f"{self.name}_{self.space}_{self.pid}_{self.start}"


@functools.cache
def this_space() -> str:
    """This pid namespace on this boot: equal values mean the same /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"
    return hashlib.sha256(f"{boot}/{ns}".encode()).hexdigest()[:10]


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (the first is the state,
    field 3), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(b")", 1)[1].split()


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when there is no such process."""
    fields = proc_stat(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None  # a zombie has stopped: it only waits for its parent
    return int(fields[19])


def new_owner_id() -> str:
    pid = os.getpid()
    name = f"{socket.gethostname()[:20]}-{secrets.token_hex(4)}"
    return str(Owner(name, this_space(), pid, start_time(pid) or 0))


def parse(owner_id: str) -> Owner | None:
    """The parts of an owner id, or None for an id without them (another format)."""
    parts = owner_id.rsplit("_", 3)
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return Owner(parts[0], parts[1], int(parts[2]), int(parts[3]))


def gone_here(owner_id: str) -> bool | None:
    """True: the owner lived in this pid namespace and has stopped. False: it runs.
    None: cannot tell from here (another host or namespace, or an id without a pid)."""
    owner = parse(owner_id)
    if owner is None or owner.space != this_space() or owner.space == "unknown":
        return None
    if proc_stat(owner.pid) is None:
        try:
            os.kill(owner.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return None  # it exists but /proc hides it from us (hidepid): cannot tell
    return start_time(owner.pid) != owner.start


def this_process(owner_id: str) -> bool:
    """The owner is this very process: another generation of it (a reload's old or new
    pool), not another replica."""
    owner = parse(owner_id)
    return (
        owner is not None
        and owner.space == this_space()
        and owner.pid == os.getpid()
        and owner.start == start_time(owner.pid)
    )


def short(owner_id: str) -> str:
    """The readable part of an owner id, for logs."""
    owner = parse(owner_id)
    return owner.name if owner is not None else owner_id
