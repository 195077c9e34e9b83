"""Ownership on the engines: this run's lease markers (lease.py), adopting what a stopped
run left into the paused pool (adopt = true; claimed first, so one replica gets each), and
sweeping this run's own containers (when an engine is back, and at close). Reaping other
runs' containers is the pool's job (proxy/orphans.py): only it knows who has stopped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from forkproxy.backends.base import LABEL_OWNER, LABEL_POOL, BackendContext
from forkproxy.backends.docker import lease
from forkproxy.backends.docker.config import DockerConfig
from forkproxy.backends.docker.containers import Containers
from forkproxy.backends.docker.ops import Container
from forkproxy.backends.docker.paused import PausedPool, Remove
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.errors import BackendError
from forkproxy.backends.support import owner

log = logging.getLogger("forkproxy.backend.docker")


def _container(engine: Engine, row: dict[str, Any]) -> Container:
    return Container(engine, row["Id"], (row.get("Names") or ["?"])[0].lstrip("/"))


class Leftovers:
    def __init__(
        self,
        cfg: DockerConfig,
        ctx: BackendContext,
        containers: Containers,
        paused: PausedPool,
        remove: Remove,
        threads: Threads,
    ) -> None:
        self._cfg = cfg
        self._ctx = ctx
        self._containers = containers
        self._paused = paused
        self._remove = remove
        self._threads = threads
        self._markers: dict[str, lease.Marker] = {}  # engine url -> this run's lease marker
        self._adopted: set[str] = set()  # ids of containers this run claimed

    async def pool_rows(self, engine: Engine) -> list[dict[str, Any]]:
        return await self._containers.rows(engine, f"{LABEL_POOL}={self._ctx.pool_name}")

    # -- lease -----------------------------------------------------------------------------

    async def beat(self, engine: Engine) -> None:
        """Renew (or create) this run's lease marker on one engine."""
        marker = self._markers.get(engine.url)
        if marker is None:
            pool, me = self._ctx.pool_name, self._ctx.owner_id
            marker = self._markers[engine.url] = lease.Marker(engine, self._cfg.image, pool, me)
        try:
            await self._threads.call(marker.beat)
        except Exception as exc:
            raise translate(exc, engine.url, "lease heartbeat") from exc

    # -- adoption --------------------------------------------------------------------------

    async def adopt(self, engine: Engine) -> None:
        """With adopt = true, running or paused containers of runs that have provably
        stopped (owner.gone_here) join the paused pool, each claimed first."""
        if not self._cfg.adopt:
            return
        rows = await self.pool_rows(engine)
        claimed = lease.claims(rows)
        for row in rows:
            if not self._paused.has_room():
                return
            who = lease.owner_of(row, claimed)
            if (
                lease.is_marker(row)
                or who == self._ctx.owner_id
                or row.get("State") not in ("running", "paused")
                or row.get("Image") != self._cfg.image
                or owner.gone_here(who) is not True
            ):
                continue
            c = _container(engine, row)
            if not await self._claim(c):
                continue
            self._adopted.add(c.id)
            try:
                await self._paused.adopt(c, row.get("State") == "paused")
            except BackendError as exc:
                log.info("leftover %s not adoptable: %s", c.name, exc)
                await self._remove(c)  # and its claim (release)

    async def _claim(self, c: Container) -> bool:
        pool, cid, me = self._ctx.pool_name, c.id, self._ctx.owner_id
        try:
            won = await self._threads.call(lease.claim, c.engine, self._cfg.image, pool, cid, me)
        except Exception as exc:
            log.info("cannot claim leftover %s: %s", c.name, translate(exc, c.engine.url, "claim"))
            return False
        if not won:
            log.info("leftover %s was claimed by another replica", c.name)
        return bool(won)

    def adopted(self, c: Container) -> bool:
        """Claimed by this run from a stopped one (its claim marker stands until removal)."""
        return c.id in self._adopted

    async def release(self, c: Container, *, claimed: bool = False) -> None:
        """After removing a container: remove its claim marker if it was adopted (by us,
        or `claimed` by a run whose containers we reap)."""
        if c.id in self._adopted or claimed:
            self._adopted.discard(c.id)
            await self._unclaim(c)

    async def _unclaim(self, c: Container) -> None:
        try:
            await self._threads.call(lease.unclaim, c.engine, self._ctx.pool_name, c.id)
        except Exception as exc:
            log.warning("could not remove the claim of %s: %s", c.name, exc)

    # -- this run's own --------------------------------------------------------------------

    async def sweep(self, engine: Engine, keep: set[str], *, closing: bool = False) -> None:
        """Remove this run's containers on an engine except `keep` (ids), the claim markers
        of kept ones and, unless closing, the lease marker: all carry its owner label."""
        rows = await self._containers.rows(engine, f"{LABEL_OWNER}={self._ctx.owner_id}")
        marker = self._markers.get(engine.url)
        spare = set(keep)
        spare.update(r["Id"] for r in rows if lease.claims([r]).keys() & keep)
        if marker is not None and not closing:
            spare.add(marker.id or "")
        gone = [_container(engine, r) for r in rows if r["Id"] not in spare]
        await asyncio.gather(*(self._remove(c) for c in gone))
        if marker is not None and closing:
            marker.id = None
