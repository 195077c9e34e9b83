"""The soft RLIMIT_NOFILE the proxy started with, for the processes it starts.

The proxy raises its own soft limit to the hard one (proxy/open_files.py); every process
a backend starts would inherit the raised limit, which is not what the user configured
and breaks an app that uses select() (FD_SETSIZE 1,024) or sizes tables by the limit.
open_files records the limit here before raising it; the backends, which never import
the proxy, read it here and hand their children the original."""

from __future__ import annotations

import contextlib
import resource

_original: int | None = None  # the soft limit before the first raise; None: never raised


def remember() -> None:
    """Record the soft limit as it is now, once: later calls (a reload raises again) keep
    the first, the one the proxy was started with."""
    global _original
    if _original is None:
        _original = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def original() -> int | None:
    """The soft limit to give a child, or None when the proxy has not changed its own
    (a child inheriting it then gets what the proxy was given)."""
    if _original is None or _original == resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
        return None
    return _original


def _pair(soft: int) -> tuple[int, int]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard)


def limits() -> tuple[int, int] | None:
    """(soft, hard) for a child's setrlimit, computed in the parent: a preexec_fn then
    makes one system call between fork and exec, nothing else."""
    soft = original()
    return None if soft is None else _pair(soft)


def restore(soft: int | None) -> None:
    """In a child (a fork template, the zygote) first thing: take `soft` as its soft
    limit (lowering one's soft limit is always allowed). Its forks inherit it."""
    if soft is not None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, _pair(soft))
