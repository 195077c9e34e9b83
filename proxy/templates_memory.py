"""What an app's templates hold (a fork template and its prefork spares), measured for
the budget and the live page. Backends name an instance's template in its meta
(`template_pid`, fork mode), and the backend's listing (the pool's orphan sweep, at
its start and every orphan_timeout/6) shows each template as kind "template"; the pids
seen are remembered, so a template with no instance (idle capacity too) is counted
until it is gone.

Read from /proc by forkproxy.backends.support.memory (PSS, as instances are measured);
a backend whose instances name no template reports None: not measured, not zero."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from forkproxy.backends.base import Instance
from forkproxy.backends.support import memory


def _pid(inst: Instance, key: str) -> int | None:
    value = inst.meta.get(key, "")
    return int(value) if value.isdigit() else None


class Templates:
    """One pool's templates: learnt from its instances' meta, and from the backend's
    listing (`learn`), where a template shows as kind "template" before any instance
    names it."""

    def __init__(self) -> None:
        self._pids: set[int] = set()
        self.bytes: int | None = None  # at the last measurement; None: none known
        self.reported = False  # the backend named a template (fork mode) at least once

    @property
    def state(self) -> str:
        """ "up" (measured there), "down" (it was, it is gone), "" (none reported)."""
        if not self.reported:
            return ""
        return "up" if self.bytes is not None else "down"

    @property
    def known(self) -> bool:
        return bool(self._pids)

    def learn(self, listed: Iterable[Instance], owner: str) -> None:
        """Templates this run owns among what the backend lists (a replica's are its own)."""
        for inst in listed:
            pid = _pid(inst, "pid")
            if inst.meta.get("kind") == "template" and inst.owner_id == owner and pid:
                self._pids.add(pid)
                self.reported = True

    async def measure(self, instances: Iterable[Instance]) -> int | None:
        """Bytes every template of this pool holds now (off the event loop)."""
        forks: set[int] = set()
        for inst in instances:
            if (tpl := _pid(inst, "template_pid")) is not None:
                self._pids.add(tpl)
                self.reported = True
            if (pid := _pid(inst, "pid")) is not None:
                forks.add(pid)
        if not self._pids:
            self.bytes = None
            return None
        sizes = await asyncio.to_thread(memory.templates, set(self._pids), forks)
        self._pids &= set(sizes)  # a template gone (replaced, given back) is not counted
        self.bytes = sum(sizes.values()) if sizes else None
        return self.bytes
