"""Containers the docker backend finds on an engine that no live instance accounts for:
an earlier run's (reaped, or adopted into the paused pool with adopt = true) and this
run's own once it cannot reach them (swept when the engine is back, and at close)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from backends.base import LABEL_OWNER, LABEL_POOL, BackendContext
from backends.docker.config import DockerConfig
from backends.docker.containers import Containers
from backends.docker.engine import Engine
from backends.docker.ops import Container
from backends.docker.paused import PausedPool, Remove
from backends.errors import BackendError

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
    ) -> None:
        self._cfg = cfg
        self._ctx = ctx
        self._containers = containers
        self._paused = paused
        self._remove = remove

    async def reap_or_adopt(self, engine: Engine) -> None:
        """Containers of this pool left by an earlier run: removed, or with adopt = true
        running ones become paused-pool members (probed, then paused) up to its size."""
        rows = await self._containers.rows(engine, f"{LABEL_POOL}={self._ctx.pool_name}")
        for row in rows:
            labels = row.get("Labels") or {}
            if labels.get(LABEL_OWNER) == self._ctx.owner_id:
                continue
            c = _container(engine, row)
            state = row.get("State")
            if (
                self._cfg.adopt
                and state in ("running", "paused")
                and row.get("Image") == self._cfg.image
                and self._paused.has_room()
            ):
                try:
                    await self._paused.adopt(c, state == "paused")
                    continue
                except BackendError as exc:
                    log.info("leftover %s not adoptable: %s", c.name, exc)
            log.info("reaping leftover container %s (owner %s)", c.name, labels.get(LABEL_OWNER))
            await self._remove(c)

    async def sweep(self, engine: Engine, keep: set[str]) -> None:
        """Remove this run's containers on an engine except `keep` (ids)."""
        rows = await self._containers.rows(engine, f"{LABEL_OWNER}={self._ctx.owner_id}")
        gone = [_container(engine, r) for r in rows if r["Id"] not in keep]
        await asyncio.gather(*(self._remove(c) for c in gone))
