"""Linux process plumbing shared by the template, its children and the backend:
parent-death signals, the in-place environment label of forked children, /proc reads."""

from __future__ import annotations

import ctypes
import os
import signal

from forkproxy.backends.support.owner import all_pids as all_pids  # leftovers' scan
from forkproxy.backends.support.owner import proc_stat

_PR_SET_PDEATHSIG = 1

# The template is exec'd with this variable padded to a fixed width; a forked child
# overwrites the value *in place* in its environment block, because /proc/<pid>/environ
# shows the block written at exec time, not later putenv() calls.  That is how list()
# tells a forked instance (and its id) from the template it was forked from.
ROLE_VAR = "FORKPROXY_ROLE"
ROLE_WIDTH = 160
ROLE_TEMPLATE = "template"
ROLE_EXEC = "exec"
ROLE_SPARE = "spare"  # forked ahead, not yet an instance: part of its template
ROLE_ZYGOTE = "zygote"  # the shared process templates are forked from (zygote.py)
ROLE_FORK_PREFIX = "fork:"


_libc: ctypes.CDLL | None = None


def load_libc() -> ctypes.CDLL:
    """libc, loaded once in the parent: a fork then pays no dlopen on its hot path, and
    a preexec_fn (child of a threaded proxy) never takes the dynamic loader's lock."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent (thread) dies."""
    if load_libc().prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def padded_role(role: str) -> str:
    return role.ljust(ROLE_WIDTH)


def _env_block() -> tuple[int, int]:
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # Fields after the ")" that closes comm start at field 3; env_start/env_end are 50/51.
    fields = stat.rsplit(b")", 1)[1].split()
    return int(fields[47]), int(fields[48])


def role_slot() -> int | None:
    """Address of this process's ROLE_VAR value in its exec-time environment block,
    or None when the variable is absent or narrower than ROLE_WIDTH. A fork inherits
    the same address, so the template finds it once and every child just writes."""
    return env_slot(ROLE_VAR)


def env_slot(var: str) -> int | None:
    """Address of `var`'s value in this process's exec-time environment block, if it was
    padded to ROLE_WIDTH there (the zygote pads its pool and owner labels too: a template
    forked from it writes its own)."""
    with open("/proc/self/environ", "rb") as f:
        block = f.read()
    key = var.encode() + b"="
    if block.startswith(key):
        pos = len(key)
    else:
        found = block.find(b"\0" + key)
        if found < 0:
            return None
        pos = found + 1 + len(key)
    if b"\0" in block[pos : pos + ROLE_WIDTH] or len(block) < pos + ROLE_WIDTH:
        return None  # the slot is narrower than we padded it: not ours to write
    start, end = _env_block()
    addr = start + pos
    if addr + ROLE_WIDTH > end:
        return None
    return addr


def write_role(slot: int, role: str) -> bool:
    """Overwrite the value at `slot` (from role_slot() or env_slot()) in place."""
    value = role.encode()
    if len(value) > ROLE_WIDTH:
        return False
    ctypes.memmove(slot, value.ljust(ROLE_WIDTH), ROLE_WIDTH)
    return True


def read_environ(pid: int) -> dict[str, str] | None:
    """The exec-time environment of `pid`, or None if gone or not readable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            name = key.decode(errors="replace")
            text = value.decode(errors="replace")
            # labels written in place are padded to their slot's width
            env[name] = text.rstrip() if name.startswith("FORKPROXY_") else text
    return env


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of `pid`, or None if it does not exist."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    return fields[0].decode(), int(fields[1])


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")
