"""How much memory a process holds, read from /proc: an instance (the process backend's
measure) and an app's fork templates (the proxy's templates_memory). Blocking: run in a
thread, once for every process at a time.

PSS (proportional set size), not RSS: a fork shares its template's pages until it
writes them, and RSS would charge every fork the whole template. PSS charges each
process its private pages plus its share of the shared ones, so the sum over a
template and its forks is the memory they really hold. Kernels without smaps_rollup
(before 4.14) give RSS from statm instead, an overestimate for forks."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

from forkproxy.backends.support.owner import all_pids, proc_stat

_PAGE = os.sysconf("SC_PAGE_SIZE")


def pss(pid: int) -> int | None:
    """Bytes `pid` holds (PSS, else RSS), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in all_pids():
        fields = proc_stat(pid)
        if fields is not None and fields[0] not in (b"Z", b"X"):
            kids.setdefault(int(fields[1]), []).append(pid)
    return kids


def _tree(root: int, kids: Mapping[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def tree(root: int) -> list[int]:
    """`root` and every process below it (one pass over /proc)."""
    return _tree(root, _children())


def measure(pids: Mapping[str, int], *, tree: bool) -> dict[str, int]:
    """Bytes per instance id for each pid still there. `tree`: the pid and every
    process below it (an exec'd command's workers), found by one pass over /proc."""
    kids = _children() if tree and pids else {}
    out: dict[str, int] = {}
    for iid, root in pids.items():
        total, seen = 0, False
        for pid in _tree(root, kids) if tree else [root]:
            size = pss(pid)
            if size is not None:
                total += size
                seen = seen or pid == root
        if seen:
            out[iid] = total
    return out


def _kids_of(pid: int) -> list[int] | None:
    # the kernel's own list (CONFIG_PROC_CHILDREN): no pass over every process
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return None


def templates(roots: Collection[int], instances: Collection[int]) -> dict[int, int]:
    """Bytes each template pid in `roots` holds with its children that are not
    `instances` (its prefork spares), for the templates still there. The forks it made
    are counted as instances (measure), not here."""
    out: dict[int, int] = {}
    table: Mapping[int, list[int]] | None = None
    for root in roots:
        size = pss(root)
        if size is None:
            continue
        kids = _kids_of(root)
        if kids is None:
            table = table if table is not None else _children()
            kids = list(table.get(root, ()))
        out[root] = size + sum(pss(k) or 0 for k in kids if k not in instances)
    return out
