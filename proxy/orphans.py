"""Reaping what stopped replicas left behind, never what a live sibling runs.

Replicas may share a pool name, so an instance with another owner id is only reaped when
that owner has provably stopped: its pid is gone on this host (forkproxy.backends.support.owner),
or its lease (Backend.leases) has not changed for `grace` seconds of *our* clock — no
clock is compared across hosts. With `within` = pool.orphan_timeout, the lease is judged
every within/6 seconds and stale after 2/3·within, so a dead replica's instances go
within `within` of its last heartbeat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from forkproxy.backends.base import Backend, Instance
from forkproxy.backends.errors import BackendError
from forkproxy.backends.support import owner as owners
from forkproxy.proxy.metrics import Metrics

log = logging.getLogger("forkproxy.pool")


@dataclass
class _Seen:
    token: str
    since: float  # our clock when the token was last seen changing
    used: bool = True  # seen in the latest sweep


class Judge:
    """Pure bookkeeping of lease tokens: which foreign owners have stopped."""

    def __init__(
        self,
        grace: float,
        clock: Callable[[], float],
        gone_here: Callable[[str], bool | None] = owners.gone_here,
    ) -> None:
        self.grace = grace
        self.clock = clock
        self._gone_here = gone_here
        self._seen: dict[str, _Seen] = {}
        self._leases: dict[str, str] | None = None

    def observe(self, leases: dict[str, str] | None) -> None:
        """Record the leases listed now (None: the backend keeps none)."""
        now = self.clock()
        self._leases = leases
        for seen in self._seen.values():
            seen.used = False
        for who, token in (leases or {}).items():
            self._note(who, token, now)

    def _note(self, who: str, token: str, now: float) -> _Seen:
        seen = self._seen.get(who)
        if seen is None or seen.token != token:
            seen = self._seen[who] = _Seen(token, now)
        seen.used = True
        return seen

    def stopped(self, who: str) -> bool:
        proof = self._gone_here(who)
        if proof is not None:
            return proof
        if self._leases is None:
            return False  # no lease and no proof: we cannot know, so we never touch it
        # No lease listed counts as the token "": it must stay absent for `grace` too.
        seen = self._note(who, self._leases.get(who, ""), self.clock())
        return self.clock() - seen.since > self.grace

    def forget_unused(self) -> None:
        self._seen = {k: v for k, v in self._seen.items() if v.used}


class OrphanReaper:
    def __init__(
        self,
        backend: Backend,
        owner_id: str,
        metrics: Metrics,
        within: float,
        clock: Callable[[], float],
        on_listed: Callable[[list[Instance]], None] | None = None,
    ) -> None:
        self.backend = backend
        self.on_listed = on_listed  # each sweep's listing, for the pool (its templates)
        self.owner_id = owner_id
        self.metrics = metrics
        self.interval = within / 6
        self.judge = Judge(within * 2 / 3, clock)
        self._spared: set[str] = set()  # live owners already logged

    async def sweep(self) -> None:
        """List the pool's instances and stop those whose owner has stopped."""
        try:
            leases = await self.backend.leases()
            found = await self.backend.list()
        except BackendError as exc:
            log.warning("could not list leftover instances: %s", exc)
            return
        self.judge.observe(leases)
        if self.on_listed is not None:
            self.on_listed(found)
        dead: list[Instance] = []
        for inst in found:
            if inst.owner_id == self.owner_id:
                continue
            if self.judge.stopped(inst.owner_id):
                dead.append(inst)
            elif inst.owner_id not in self._spared:
                self._spared.add(inst.owner_id)
                # a reload's other generation runs in this process: not a second replica
                log.info(
                    "instances of %s %s are left alone",
                    "this proxy's other generation"
                    if owners.this_process(inst.owner_id)
                    else "live owner (another replica sharing the pool)",
                    inst.owner_id,
                )
        self.judge.forget_unused()
        # at once: a stop may wait out its grace, and the next heartbeat waits for us
        await asyncio.gather(*(self._reap(inst) for inst in dead))

    async def _reap(self, inst: Instance) -> None:
        # meta["marker"]: a backend's lease or claim record of that owner, not an instance
        marker = inst.meta.get("marker")
        what = f"{marker} marker" if marker else "instance"
        log.warning("reaping %s %s of stopped owner %s", what, inst.id, inst.owner_id or "?")
        try:
            await self.backend.stop(inst, "orphan")
            if not marker:
                self.metrics.stops.labels("orphan").inc()
        except BackendError as exc:
            log.warning("could not reap leftover %s: %s", inst.id, exc)

    async def run(self) -> None:
        """Heartbeat and sweep every `interval` until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.backend.heartbeat()
            except BackendError as exc:
                log.warning("lease heartbeat failed: %s", exc)
            await self.sweep()
