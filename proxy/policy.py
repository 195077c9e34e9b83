"""The scale decision, pure: a snapshot of the pool in, actions out. No I/O, no clock
reads, no event loop, so every rule is unit-tested directly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from proxy.config import PoolConfig


@dataclass(frozen=True)
class InstanceView:
    id: str
    ready: bool  # READY (serving); False means STARTING
    in_flight: int
    idle_since: float | None  # clock time it last became idle; None while busy
    retiring: bool = False  # reached max_requests_per_instance: takes no new requests


@dataclass(frozen=True)
class Snapshot:
    now: float
    waiting: int  # requests held in the queue
    instances: tuple[InstanceView, ...]
    starts_blocked_until: float = 0.0  # start backoff after failures


@dataclass(frozen=True)
class Decision:
    start: int = 0
    stop: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default=())


def per_instance_capacity(cfg: PoolConfig) -> int:
    """How many requests one fresh instance absorbs over its life-time slot."""
    if cfg.max_requests_per_instance:
        return min(cfg.max_concurrency, cfg.max_requests_per_instance)
    return cfg.max_concurrency


def decide(snap: Snapshot, cfg: PoolConfig) -> Decision:
    ready = [i for i in snap.instances if i.ready and not i.retiring]
    starting = [i for i in snap.instances if not i.ready]
    live = len(ready) + len(starting)
    cap = per_instance_capacity(cfg)
    reasons: list[str] = []

    # (a) queued requests that neither free slots nor starts in flight will absorb
    free = sum(max(0, cfg.max_concurrency - i.in_flight) for i in ready)
    unabsorbed = snap.waiting - free - len(starting) * cap
    want = math.ceil(unabsorbed / cap) if unabsorbed > 0 else 0
    if want:
        reasons.append(f"queued:{snap.waiting}")

    # (b) ahead of saturation: average in-flight per instance above target. One start
    # at a time, only when none is in flight, and never more than one instance beyond
    # what max_concurrency needs: headroom, not a second burst response. (A burst of N
    # must not start more than ceil(N / max_concurrency) + max_starting.)
    load = sum(i.in_flight for i in ready)
    if (
        live
        and not starting
        and want == 0
        and load / live > cfg.target_concurrency
        and live < math.ceil(load / cfg.max_concurrency) + 1
    ):
        want = 1
        reasons.append("target_concurrency")

    # floors: min_instances and idle spares
    if live < cfg.min_instances and cfg.min_instances - live > want:
        want = cfg.min_instances - live
        reasons.append("min_instances")
    spares = sum(1 for i in ready if i.in_flight == 0) + len(starting)
    if spares < cfg.warm_pool and cfg.warm_pool - spares > want:
        want = cfg.warm_pool - spares
        reasons.append("warm_pool")

    # ceilings: concurrent starts, total instances (retiring ones still hold a slot)
    total = len(snap.instances)
    want = min(want, cfg.max_starting - len(starting), cfg.max_instances - total)
    if snap.now < snap.starts_blocked_until:
        want = 0
    want = max(0, want)

    # reaping: idle past the TTL, keeping min_instances and warm spares, never while
    # requests wait (a queued request would rather take the idle one)
    stop: list[str] = []
    if snap.waiting == 0:
        keep = max(cfg.min_instances, cfg.warm_pool)
        idle = sorted(
            (i for i in ready if i.in_flight == 0 and i.idle_since is not None),
            key=lambda i: i.idle_since or 0.0,
        )
        removable = len(ready) - keep
        for inst in idle:
            if removable <= 0:
                break
            assert inst.idle_since is not None
            if snap.now - inst.idle_since >= cfg.idle_ttl:
                stop.append(inst.id)
                removable -= 1
    return Decision(start=want, stop=tuple(stop), reasons=tuple(reasons))
