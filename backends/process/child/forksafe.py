"""What fork mode does around fork() so forks share nothing they must not, the way
gunicorn's preload_app does: before the first fork the template closes what it opened
while importing and warming the app; each fork reseeds its random state and runs the
user's `post_fork` hook before it serves.

Safe to share (copy-on-write): imported modules, built routes, warmed caches, files
opened read-only. Never shared: sockets to databases or services (two processes on one
connection interleave their bytes), threads (fork copies only the forking one), locks
held at fork time, and PRNG state (two forks would draw the same "random" numbers)."""

from __future__ import annotations

import random
import sys
from typing import Any

from forkproxy.backends.process.child import apps


def before_fork() -> None:
    """Close connections the template opened: each fork opens its own on first use."""
    db = sys.modules.get("django.db")
    conf = sys.modules.get("django.conf")
    # imported by the zygote's preload for every app: only a configured Django has any
    if db is not None and conf is not None and conf.settings.configured:
        # Django reconnects lazily per thread; a connection opened by warmup (or by an
        # import that ran a query) would otherwise be inherited by every fork.
        db.connections.close_all()


def after_fork(post_fork: str | None, app: Any) -> None:
    """In a fork, before it serves: fresh PRNG state, then the user's hook."""
    # CPython reseeds the global `random` at fork (os.register_at_fork); stated here so
    # it holds on any interpreter. `secrets`, `uuid.uuid4` and `os.urandom` read the
    # kernel and need nothing. Random() instances the app made itself and other PRNGs
    # (numpy's global state) are the post_fork hook's to reseed.
    random.seed()
    if post_fork:
        apps.call_hook(post_fork, app, "post_fork")
