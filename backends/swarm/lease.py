"""This run's lease in the swarm, for replicas on other hosts that share the pool name: a
Swarm config object labelled with pool, owner and a counter that every heartbeat advances
(a new config, then the previous one removed: configs are immutable). The swarm's store is
the one place every replica sees, wherever it runs; no clock is compared across hosts."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import docker.errors

from forkproxy.backends.base import LABEL_MANAGED, LABEL_OWNER, LABEL_POOL, BackendContext
from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.threads import Threads

log = logging.getLogger("forkproxy.backend.swarm")

LABEL_LEASE = "io.forkproxy.lease"  # the heartbeat counter


@dataclass(frozen=True)
class LeaseConfig:
    """Instance.handle of another run's lease, listed so that the run that reaps a stopped
    owner's services removes its lease with them."""

    id: str
    name: str
    owner: str


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Lease:
    def __init__(self, engine: Engine, threads: Threads, ctx: BackendContext) -> None:
        self._engine = engine
        self._threads = threads
        self._ctx = ctx
        self._prefix = f"forkproxy-lease-{_h(ctx.pool_name)}-{_h(ctx.owner_id)}"
        self._seq = 0
        self._current: str | None = None  # config id

    async def beat(self) -> None:
        """Advance the counter: create the next config, remove the previous one."""
        self._seq += 1
        labels = {
            LABEL_MANAGED: "true",
            LABEL_POOL: self._ctx.pool_name,
            LABEL_OWNER: self._ctx.owner_id,
            LABEL_LEASE: str(self._seq),
        }
        api = self._engine.client.api
        made = await self._threads.call(
            api.create_config, f"{self._prefix}-{self._seq}", self._ctx.owner_id.encode(), labels
        )
        previous, self._current = self._current, made["ID"]
        if previous is not None:
            await self._remove(previous)

    async def all(self) -> dict[str, str]:
        """Owner id -> its latest counter, for every owner with a lease in this pool."""
        latest: dict[str, int] = {}
        for row in await self._rows():
            labels = (row.get("Spec") or {}).get("Labels") or {}
            owner, seq = labels.get(LABEL_OWNER), labels.get(LABEL_LEASE, "")
            if owner and seq.isdigit():
                latest[owner] = max(latest.get(owner, 0), int(seq))
        return {owner: str(seq) for owner, seq in latest.items()}

    async def others(self) -> list[LeaseConfig]:
        """The lease configs of every other run in this pool."""
        out = []
        for row in await self._rows():
            spec = row.get("Spec") or {}
            owner = (spec.get("Labels") or {}).get(LABEL_OWNER, "")
            if owner != self._ctx.owner_id:
                out.append(LeaseConfig(row["ID"], str(spec.get("Name", "")), owner))
        return out

    async def _rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._threads.call(
            self._engine.client.api.configs,
            filters={"label": f"{LABEL_POOL}={self._ctx.pool_name}"},
        )
        return rows

    async def drop(self) -> None:
        """A clean stop: this run holds no lease any more."""
        if self._current is not None and self._engine.client is not None:
            await self._remove(self._current)
            self._current = None

    async def remove(self, lease: LeaseConfig) -> None:
        """Another run's lease, once that run is judged stopped."""
        await self._remove(lease.id)

    async def _remove(self, config_id: str) -> None:
        try:
            await self._threads.call(self._engine.client.api.remove_config, config_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("could not remove lease config %s: %s", config_id, exc)
