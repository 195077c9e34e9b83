"""The scale decision, pure: a snapshot of the pool in, actions out. No I/O, no clock
reads, no event loop, so every rule is unit-tested directly.

Everything is priced by what a start costs, measured by the pool (`Snapshot.start_cost`):
- headroom: the demand that arrives while a start is under way (Little's law: growth of
  demand x start latency), on top of what the current load needs at `target`;
- keep-alive: an idle instance is worth keeping only while that is cheaper than a start
  when the next request comes (ski rental), so a 5 ms fork is kept for well under a
  second and a multi-second VM clone for much longer;
- scale-in: instances beyond what the peak demand of the last keep-alive window needs
  are drained (they finish what they have, take nothing new), idle ones first;
- the last instance: held through the app's learned idle gaps (`Snapshot.gap_window`,
  backends/support/gaps.py) when they are short enough to pay, so a steadily called app
  does not scale to zero between its requests. Only the last one: the capacity above
  it follows the load as before, so the learned window costs one instance at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from forkproxy.proxy.config import PoolConfig

# Keep-alive under idle_ttl = "auto": KEEP_ALIVE_STARTS x the measured start cost. A start
# costs its own instance-seconds plus the latency it adds to the request that waits for
# it; weighing a second of a waiting request at ~20 instance-seconds puts the ski-rental
# break-even at ~20 start times (fork ~10 ms -> 0.5 s floor, docker create ~250 ms -> 5 s,
# a 3 s VM clone -> 1 min).
KEEP_ALIVE_STARTS = 20.0
KEEP_ALIVE_MIN = 0.2  # below this, scheduling noise (ticks, think times) dominates
KEEP_ALIVE_MAX = 600.0
START_COST_PRIOR = 0.05  # seconds until the first start is timed; a start running longer
# than the estimate raises it (StartCost.estimate), so a low prior only errs briefly
_EPS = 1e-9

Phase = Literal["starting", "ready", "draining"]


@dataclass(frozen=True)
class InstanceView:
    id: str
    phase: Phase
    in_flight: int
    idle_since: float | None  # clock time it last became idle; None while busy
    retiring: bool = False  # reached max_requests_per_instance: takes no new requests
    suspect: bool = False  # a request to it failed: no new ones until it proves alive

    @property
    def serving(self) -> bool:
        """Takes new requests: the only instances that count as free capacity."""
        return self.phase == "ready" and not self.retiring and not self.suspect


@dataclass(frozen=True)
class Snapshot:
    now: float
    waiting: int  # requests held in the queue whose clients are still there
    instances: tuple[InstanceView, ...]  # starting, ready and draining ones
    starts_blocked_until: float = 0.0  # start backoff after failures
    refused: int = 0  # refused for a full queue just now: demand, though not held
    start_cost: float = START_COST_PRIOR  # measured seconds from start to READY
    growth: float = 0.0  # how fast requests in flight rise, requests/s
    recent_peak: float = 0.0  # peak requests in flight over the last keep_alive() seconds
    finishing: float = 0.0  # requests finishing per second (slots freed), recent
    backlog_age: float = 0.0  # how long requests have been waiting without a break
    gap_window: float = 0.0  # hold the last instance this long idle (learned; 0: not)


@dataclass(frozen=True)
class Decision:
    start: int = 0
    stops: tuple[tuple[str, str], ...] = ()  # (instance id, reason): drain, then stop
    reasons: tuple[str, ...] = field(default=())

    @property
    def stop(self) -> tuple[str, ...]:
        return tuple(i for i, _ in self.stops)


def per_instance_capacity(cfg: PoolConfig) -> int:
    """How many requests one fresh instance absorbs over its life-time slot."""
    if cfg.max_requests_per_instance:
        return min(cfg.max_concurrency, cfg.max_requests_per_instance)
    return cfg.max_concurrency


def target(cfg: PoolConfig) -> float:
    """In-flight requests per instance the pool plans for. "auto" is max_concurrency:
    headroom comes from the start cost and the load's growth, not from a fixed fraction."""
    t = cfg.max_concurrency if cfg.target_concurrency is None else cfg.target_concurrency
    return min(float(t), float(per_instance_capacity(cfg)))


def keep_alive(cfg: PoolConfig, start_cost: float) -> float:
    """How long idle capacity is kept: idle_ttl, or priced by the start cost ("auto")."""
    if cfg.idle_ttl is not None:
        return cfg.idle_ttl
    return min(KEEP_ALIVE_MAX, max(KEEP_ALIVE_MIN, KEEP_ALIVE_STARTS * start_cost))


def instances_for(demand: float, cfg: PoolConfig) -> int:
    """Serving instances that carry `demand` in-flight requests at target, plus floors."""
    need = math.ceil(demand / target(cfg) - _EPS) if demand > 0 else 0
    return max(cfg.min_instances, need + cfg.warm_pool)


def decide(snap: Snapshot, cfg: PoolConfig) -> Decision:
    serving = [i for i in snap.instances if i.serving]
    starting = [i for i in snap.instances if i.phase == "starting"]
    cap = per_instance_capacity(cfg)
    reasons: list[str] = []
    demand_in = snap.waiting + snap.refused

    # (a) held (or refused) requests that neither free slots, nor starts in flight, nor
    # the slots that free up while a start would run (requests finishing x start cost:
    # waiting 5 ms for a slot beats starting an instance for 5 ms) absorb. The last only
    # for a young queue: one that outlives a start is a shortage, not a passing peak
    # (closed-loop clients keep a saturated pool's queue at a constant length).
    free = sum(max(0, cfg.max_concurrency - i.in_flight) for i in serving)
    young = snap.waiting and snap.backlog_age < snap.start_cost
    freeing = math.floor(snap.finishing * snap.start_cost) if young else 0
    unabsorbed = demand_in - free - len(starting) * cap - freeing
    want = math.ceil(unabsorbed / cap) if unabsorbed > 0 else 0
    if want:
        reasons.append(f"queued:{demand_in}")

    # (b) ahead of the load: what the requests in flight need at target, plus the whole
    # requests that arrive while a start is under way (Little's law; under one, a request
    # may wait for a start rather than every instance keeping a spare). Held requests are
    # (a)'s. Starts in flight count as capacity: no thundering herd.
    load = sum(i.in_flight for i in serving)
    # ... at most the load itself (a step shows as steep growth for a moment: extrapolating
    # it past doubling within one start only overshoots) and one round of starts; none
    # while requests wait (they are the growth, and (a) starts for them): a burst of N
    # starts at most ceil(N / max_concurrency) + max_starting instances
    ahead = 0
    if not snap.waiting:
        growth = math.floor(snap.growth * snap.start_cost)
        ahead = min(load, growth, math.floor(cfg.max_starting * target(cfg)))
    need = instances_for(load + ahead, cfg) - len(serving) - len(starting)
    if need > want:
        want = need
        reasons.append(f"load:{load}+{ahead}")

    # ceilings: concurrent starts, total instances (draining and retiring ones still
    # hold a slot until they are gone: max_instances is a hard cap)
    want = min(want, cfg.max_starting - len(starting), cfg.max_instances - len(snap.instances))
    if snap.now < snap.starts_blocked_until:
        want = 0
    want = max(0, want)
    return Decision(
        start=want, stops=_scale_in(snap, cfg, serving, starting), reasons=tuple(reasons)
    )


def _scale_in(
    snap: Snapshot, cfg: PoolConfig, serving: list[InstanceView], starting: list[InstanceView]
) -> tuple[tuple[str, str], ...]:
    """Never while requests wait or starts are under way (they'd rather take the one we
    stop). Two rules, both keeping min_instances and warm_pool spares on top of the load,
    and the last instance while the learned gap window holds it: surplus beyond what the
    window's peak needs is drained (least busy first); and an instance idle past the
    keep-alive is stopped even if the peak still counts it."""
    if snap.waiting or snap.refused or starting:
        return ()
    ttl = keep_alive(cfg, snap.start_cost)
    load = sum(i.in_flight for i in serving)
    order = sorted(
        serving,
        key=lambda i: (i.in_flight, i.idle_since if i.idle_since is not None else math.inf),
    )
    held = _held_last(snap, serving)
    stops: list[tuple[str, str]] = []
    surplus = len(serving) - max(held, instances_for(max(snap.recent_peak, load), cfg))
    for inst in order[: max(0, surplus)]:  # "surplus" if it still has requests to finish
        stops.append((inst.id, "surplus" if inst.in_flight else "idle"))
    room = len(serving) - len(stops) - max(held, instances_for(load, cfg))
    for inst in order[len(stops) :]:
        if room <= 0 or inst.in_flight or inst.idle_since is None:
            break
        if snap.now - inst.idle_since >= ttl:
            stops.append((inst.id, "idle"))
            room -= 1
    return tuple(stops)


def _held_last(snap: Snapshot, serving: list[InstanceView]) -> int:
    """1 while the learned gap window holds the app's last instance: some instance is busy
    or went idle less than gap_window ago (the most recently used one is the one kept:
    scale-in stops the longest idle first)."""
    if snap.gap_window <= 0:
        return 0
    for i in serving:
        if i.idle_since is None or snap.now - i.idle_since < snap.gap_window:
            return 1
    return 0
