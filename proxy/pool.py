"""The pool: instances and their states, the bounded FIFO hold queue, assignment (pack or
least-loaded), and the control loop that turns policy decisions into backend calls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from backends.base import Backend, BackendContext, Instance
from backends.errors import BackendError
from backends.support.probe import wait_ready
from backends.support.tasks import TaskSet
from proxy.config import PoolConfig
from proxy.demand import DemandTrace, StartCost
from proxy.metrics import Metrics
from proxy.orphans import OrphanReaper
from proxy.policy import (
    KEEP_ALIVE_MAX,
    InstanceView,
    Phase,
    Snapshot,
    decide,
    keep_alive,
    target,
)

log = logging.getLogger("forkproxy.pool")


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


_STATES = tuple(State)
_PHASES: dict[State, Phase] = {
    State.STARTING: "starting",
    State.READY: "ready",
    State.DRAINING: "draining",
}
_LIVE = tuple(_PHASES)  # states that hold an instance slot (max_instances counts them)


class PoolError(Exception):
    status = 503
    reason = "unavailable"


class QueueFull(PoolError):
    status = 503
    reason = "queue_full"


class HoldTimeout(PoolError):
    status = 504
    reason = "hold_timeout"


class NoInstance(PoolError):
    """Starts keep failing and nothing is serving: waiters are told instead of hanging."""

    status = 503
    reason = "start_failed"


class PoolClosed(PoolError):
    status = 503
    reason = "shutting_down"


@dataclass(eq=False)
class Slot:
    id: str
    created: float
    state: State = State.STARTING
    instance: Instance | None = None
    in_flight: int = 0
    served: int = 0
    ready_at: float | None = None
    last_used: float = 0.0
    idle_since: float | None = None
    retiring: bool = False
    suspect: bool = False  # a request to it failed: no new ones until alive() answers
    strikes: int = 0  # failures without a success in between
    died: asyncio.Event = field(default_factory=asyncio.Event)
    death_reason: str = ""
    stop_reason: str = ""  # DRAINING: why; cleared once its stop is under way
    solo: bool = False  # no other start was under way when it began

    def view(self) -> InstanceView:
        return InstanceView(
            id=self.id,
            phase=_PHASES[self.state],
            in_flight=self.in_flight,
            idle_since=self.idle_since,
            retiring=self.retiring,
            suspect=self.suspect,
        )


@dataclass(eq=False)
class Lease:
    slot: Slot
    queued: float  # seconds held in the queue
    cold: bool  # waited on an instance that started for it
    released: bool = False

    @property
    def instance(self) -> Instance:
        assert self.slot.instance is not None
        return self.slot.instance


@dataclass(eq=False)
class _Waiter:
    fut: asyncio.Future[Slot]
    arrived: float


class Pool:
    def __init__(
        self,
        cfg: PoolConfig,
        backend: Backend,
        ctx: BackendContext,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self.ctx = ctx
        self.metrics = metrics
        self.clock = clock
        self._slots: dict[str, Slot] = {}
        self._waiters: deque[_Waiter] = deque()
        self._tasks = TaskSet("pool")
        self._pack = cfg.routing == "pack"
        self._target = target(cfg)
        self._in_flight = 0  # requests assigned to instances and not released
        self._queued_since = 0.0  # when the queue last went from empty to non-empty
        self._start_cost = StartCost()
        self._demand = DemandTrace(cfg.tick, max(cfg.idle_ttl or 0.0, KEEP_ALIVE_MAX) + 1.0)
        self._failures = 0
        self._blocked_until = 0.0
        self._closing = False
        self._wake = asyncio.Event()
        self._probe_session: aiohttp.ClientSession | None = None
        self._state_gauges = {st: metrics.instances.labels(st.value) for st in _STATES}
        self.gone_hooks: list[Callable[[Instance], None]] = []  # e.g. drop pooled connections
        ctx.on_death = self.on_death

    def __repr__(self) -> str:
        by: dict[str, int] = {}
        for s in self._slots.values():
            by[s.state.value] = by.get(s.state.value, 0) + 1
        busy = sum(s.in_flight for s in self._slots.values())
        return f"<Pool {by} {busy} in flight, {len(self._waiters)} queued>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._probe_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2.0),
            auto_decompress=False,
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
        )
        await self.backend.prepare()
        self.cfg = self.cfg.with_concurrency_hint(self.backend.concurrency_hint())
        self._target = target(self.cfg)
        await self._reap_orphans()
        self._tasks.spawn(self._control_loop(), "control")
        self._rebalance()

    async def _reap_orphans(self) -> None:
        """Stop what stopped replicas of this pool name left; then keep doing it (and keep
        this run's lease fresh) every orphan_timeout/6 while the pool runs."""
        reaper = OrphanReaper(
            self.backend, self.ctx.owner_id, self.metrics, self.cfg.orphan_timeout, self.clock
        )
        await reaper.sweep()
        self._tasks.spawn(reaper.run(), "orphans")

    async def aclose(self) -> None:
        self._closing = True
        while self._waiters:
            w = self._waiters.popleft()
            if not w.fut.done():
                w.fut.set_exception(PoolClosed("shutting down"))
        await self._tasks.aclose()
        slots = list(self._slots.values())
        await asyncio.gather(*(self._stop(s, "shutdown") for s in slots), return_exceptions=True)
        await self.backend.aclose()
        if self._probe_session is not None:
            await self._probe_session.close()
        self._update_gauges()

    # -- data path ---------------------------------------------------------------------

    def _pick(self) -> Slot | None:
        """least_loaded: fewest in flight (ties: most recently used, so idle ones age out).
        pack (the default): the busiest instance still below the target (ties: most
        recently used), so surplus instances go idle and are drained; least-loaded above.
        DRAINING, retiring and suspect instances take nothing new."""
        best: Slot | None = None
        packed: Slot | None = None
        limit = self.cfg.max_concurrency
        target = self._target if self._pack else 0.0
        for s in self._slots.values():
            if s.state is not State.READY or s.retiring or s.suspect or s.in_flight >= limit:
                continue
            if (
                best is None
                or s.in_flight < best.in_flight
                or (s.in_flight == best.in_flight and s.last_used > best.last_used)
            ):
                best = s
            if s.in_flight < target and (
                packed is None
                or s.in_flight > packed.in_flight
                or (s.in_flight == packed.in_flight and s.last_used > packed.last_used)
            ):
                packed = s
        return packed or best

    def _assign(self, slot: Slot) -> None:
        self._in_flight += 1
        slot.in_flight += 1
        slot.served += 1
        slot.idle_since = None
        slot.last_used = self.clock()
        cap = self.cfg.max_requests_per_instance
        if cap and slot.served >= cap:
            slot.retiring = True

    async def acquire(self, deadline: float) -> Lease:
        """A slot on a READY instance, or PoolError. `deadline` is on self.clock."""
        if self._closing:
            raise PoolClosed("shutting down")
        arrived = self.clock()
        if not self._waiters and (slot := self._pick()) is not None:
            self._assign(slot)
            self._record(arrived)
            if slot.in_flight >= self._target:
                self._rebalance()  # maybe start one ahead of saturation
            return Lease(slot, 0.0, False)
        if len(self._waiters) >= self.cfg.max_queue:
            # refused, but still demand: with max_queue = 0 this is the only way a start
            # is ever asked for
            self._demand.refuse(arrived)
            self._demand.record(arrived, self._in_flight + 1)
            self._rebalance()
            raise QueueFull("queue full")
        w = _Waiter(asyncio.get_running_loop().create_future(), arrived)
        if not self._waiters:
            self._queued_since = arrived
        self._waiters.append(w)
        self.metrics.queue_depth.set(len(self._waiters))
        self._rebalance()
        try:
            async with asyncio.timeout(max(0.0, deadline - arrived)):
                slot = await w.fut
        except (TimeoutError, asyncio.CancelledError) as exc:
            self._drop_waiter(w)
            if isinstance(exc, TimeoutError):
                raise HoldTimeout("no instance free before the hold deadline") from None
            raise
        queued = self.clock() - arrived
        cold = slot.ready_at is not None and slot.ready_at >= arrived
        self.metrics.queue_wait.observe(queued)
        return Lease(slot, queued, cold)

    def _drop_waiter(self, w: _Waiter) -> None:
        """A waiter whose deadline passed or whose client left (the data path cancels
        its acquire): out of the queue at once, so it is no longer demand."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(w)
        self.metrics.queue_depth.set(len(self._waiters))
        if w.fut.done() and not w.fut.cancelled() and w.fut.exception() is None:
            # assigned in the same instant the deadline hit: give the slot back
            self.release(Lease(w.fut.result(), 0.0, False))
        elif not w.fut.done():
            w.fut.cancel()

    def release(self, lease: Lease, *, broken: bool = False) -> None:
        if lease.released:
            return
        lease.released = True
        slot = lease.slot
        slot.in_flight -= 1
        self._in_flight -= 1
        now = self.clock()
        self._demand.finish(now)
        slot.last_used = now
        if broken:
            self._suspect(slot)
        else:
            slot.strikes = 0
        if slot.in_flight == 0:
            slot.idle_since = now
            if slot.retiring and slot.state is State.READY:
                self._begin_stop(slot, "max_requests")
            elif slot.state is State.DRAINING and slot.stop_reason:
                self._spawn_stop(slot)  # drained: its last request is done
        if self._waiters:
            self._dispatch()
            self._after_change()
        elif slot.retiring:
            self._rebalance()

    def _suspect(self, slot: Slot) -> None:
        """A request to the instance failed in transport (refused, reset, timed out; the
        data path passes broken=True for nothing else: a malformed response is the app's
        answer to one request, not evidence the instance is dead). Ask the backend
        whether it is alive before sending it more; three failures in a row and it is
        taken out of rotation regardless, draining what it still serves."""
        if slot.state is not State.READY:
            return
        slot.strikes += 1
        if slot.strikes >= 3:
            self._begin_stop(slot, "unreachable")
            self._rebalance()
        elif not slot.suspect:
            slot.suspect = True
            self._tasks.spawn(self._check(slot), f"check:{slot.id}")

    async def _check(self, slot: Slot) -> None:
        assert slot.instance is not None
        try:
            async with asyncio.timeout(5.0):
                ok = await self.backend.alive(slot.instance)
                if ok:
                    # a dying instance can look alive for a few ms before the backend
                    # notices its death; look twice before trusting it again
                    await asyncio.sleep(0.05)
                    ok = slot.state is State.READY and await self.backend.alive(slot.instance)
        except Exception as exc:  # cannot tell: treat as dead, a new one is cheap
            log.warning("liveness check of %s failed: %r", slot.id, exc)
            ok = False
        if slot.state is not State.READY:
            return
        if ok:
            slot.suspect = False
            self._dispatch()
        else:
            log.warning("instance %s is gone", slot.id)
            self._fail(slot, "unreachable")
            self._rebalance()

    def _dispatch(self) -> None:
        while self._waiters:
            slot = self._pick()
            if slot is None:
                return
            w = self._waiters.popleft()
            if w.fut.done():
                continue
            self._assign(slot)
            w.fut.set_result(slot)
        self.metrics.queue_depth.set(0)

    def _after_change(self) -> None:
        self.metrics.queue_depth.set(len(self._waiters))
        self._rebalance()

    # -- control path ------------------------------------------------------------------

    def _record(self, now: float) -> None:
        self._demand.record(now, self._in_flight)

    def _cost(self, now: float) -> float:
        oldest = min(
            (s.created for s in self._slots.values() if s.state is State.STARTING), default=now
        )
        return self._start_cost.estimate(now - oldest)

    def effective_settings(self) -> dict[str, Any]:
        """The pool's settings as it runs them now: each `auto` value with what it resolves
        to (the live page shows these), beside the measured start cost they are priced by."""
        cost = self._cost(self.clock())
        settings: dict[str, Any] = dataclasses.asdict(self.cfg)
        if settings.pop("concurrency_auto"):
            settings["max_concurrency"] = f"auto → {self.cfg.max_concurrency}"
        if self.cfg.target_concurrency is None:
            settings["target_concurrency"] = f"auto → {self._target:g}"
        if self.cfg.idle_ttl is None:
            settings["idle_ttl"] = f"auto → {keep_alive(self.cfg, cost):.3g}s"
        settings["measured_start_cost"] = f"{cost * 1000:.3g} ms"
        return settings

    def snapshot(self) -> Snapshot:
        now = self.clock()
        self._record(now)
        views = tuple(s.view() for s in self._slots.values() if s.state in _LIVE)
        cost = self._cost(now)
        window = keep_alive(self.cfg, cost)
        # rising over the last second and still rising over the last half: a step is
        # growth once, not for the whole second the step stays in the window
        growth = min(self._demand.growth(now, 1.0), self._demand.growth(now, 0.5))
        self.metrics.start_cost.set(cost)
        self.metrics.keep_alive.set(window)
        self.metrics.demand_growth.set(growth)
        return Snapshot(
            now=now,
            waiting=len(self._waiters),
            instances=views,
            starts_blocked_until=self._blocked_until,
            refused=self._demand.refused(now),
            start_cost=cost,
            growth=growth,
            recent_peak=self._demand.peak(now, window),
            finishing=self._demand.finishing(now),
            backlog_age=now - self._queued_since if self._waiters else 0.0,
        )

    def tick(self) -> None:
        """One control-path step: what the periodic loop runs (tests call it directly
        after advancing the clock)."""
        self._rebalance()

    def _rebalance(self) -> None:
        if self._closing:
            return
        d = decide(self.snapshot(), self.cfg)
        for _ in range(d.start):
            self._launch_start(d.reasons)
        for sid, reason in d.stops:
            slot = self._slots.get(sid)
            if slot is not None:
                self._begin_stop(slot, reason)
        self._update_gauges()

    def _launch_start(self, reasons: tuple[str, ...]) -> None:
        sid = "i-" + secrets.token_hex(4)
        solo = not any(s.state is State.STARTING for s in self._slots.values())
        slot = Slot(id=sid, created=self.clock(), solo=solo)
        self._slots[sid] = slot
        log.info("starting instance %s (%s)", sid, ",".join(reasons) or "demand")
        self._tasks.spawn(self._start(slot), f"start:{sid}")

    async def _control_loop(self) -> None:
        """Periodic tick: idle reaping, backoff expiry, floors."""
        while True:
            try:
                async with asyncio.timeout(self.cfg.tick):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self.tick()

    async def _start(self, slot: Slot) -> None:
        t0 = self.clock()
        inst: Instance | None = None
        try:
            async with asyncio.timeout(self.cfg.start_timeout):
                inst = await self.backend.start(slot.id)
                slot.instance = inst
                t1 = self.clock()
                self.metrics.start_time.labels("backend").observe(t1 - t0)
                for phase, secs in inst.phases.items():
                    self.metrics.start_time.labels(phase).observe(secs)
                if not inst.ready:
                    await self._probe(slot, inst)
                self.metrics.start_time.labels("ready").observe(self.clock() - t1)
        except asyncio.CancelledError:
            self._slots.pop(slot.id, None)
            if inst is not None:
                await self._safe_stop(inst, "shutdown")
            raise
        except Exception as exc:  # every failure is counted and retried
            reason = exc.reason if isinstance(exc, BackendError) else type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = "timeout"
            if slot.death_reason:
                reason = "died"
            self._start_failed(slot, reason, exc)
            if inst is not None:
                await self._safe_stop(inst, "failed")
            return
        if slot.state is not State.STARTING or self._closing:
            self._slots.pop(slot.id, None)
            await self._safe_stop(inst, "shutdown" if self._closing else "failed")
            return
        now = self.clock()
        if slot.solo:
            # what one start costs when the next request comes: the price the policy
            # needs. Starts queued behind others in a burst would overstate it.
            self._start_cost.observe(now - t0)
        slot.state = State.READY
        slot.ready_at = now
        slot.idle_since = now
        slot.last_used = now
        self._failures = 0
        self._blocked_until = 0.0
        self.metrics.starts.labels("ok").inc()
        self.metrics.start_time.labels("total").observe(now - t0)
        log.info(
            "instance %s ready at %s in %.1f ms", slot.id, inst.endpoint.url, (now - t0) * 1000
        )
        self._dispatch()
        self._after_change()

    async def _probe(self, slot: Slot, inst: Instance) -> None:
        assert self._probe_session is not None
        url = inst.endpoint.url + self.cfg.readiness_path
        if not await wait_ready(self._probe_session, url, stop=slot.died):
            raise BackendError(f"instance died while starting: {slot.death_reason}", reason="died")

    def _start_failed(self, slot: Slot, reason: str, exc: BaseException) -> None:
        self._slots.pop(slot.id, None)
        self._failures += 1
        backoff = min(5.0, 0.05 * 2 ** (self._failures - 1))
        self._blocked_until = self.clock() + backoff
        self.metrics.starts.labels(reason).inc()
        log.warning(
            "instance %s failed to start (%s): %s; attempt %d, next in %.2fs",
            slot.id,
            reason,
            exc,
            self._failures,
            backoff,
        )
        serving = any(s.state in (State.READY, State.STARTING) for s in self._slots.values())
        if self._failures >= self.cfg.start_retries and not serving:
            while self._waiters:
                w = self._waiters.popleft()
                if not w.fut.done():
                    w.fut.set_exception(NoInstance(f"instance start failed: {reason}"))
            self.metrics.queue_depth.set(0)
        self._update_gauges()
        self._wake.set()

    def on_death(self, instance_id: str, reason: str) -> None:
        """Backends call this when an instance exits on its own."""
        slot = self._slots.get(instance_id)
        if slot is None or slot.state in (State.DRAINING, State.STOPPED, State.FAILED):
            return
        slot.death_reason = reason
        slot.died.set()
        if slot.state is State.STARTING:
            return  # _start sees the event and counts the failure
        self._fail(slot, "died")
        log.warning("instance %s died: %s", instance_id, reason)
        self._rebalance()

    def _fail(self, slot: Slot, reason: str) -> None:
        slot.state = State.FAILED
        self._slots.pop(slot.id, None)
        self.metrics.stops.labels(reason).inc()
        if slot.instance is not None:
            self._tasks.spawn(self._safe_stop(slot.instance, reason), f"reap:{slot.id}")
        self._update_gauges()

    def _begin_stop(self, slot: Slot, reason: str) -> None:
        """Out of rotation at once; stopped once its last request (a long stream, a
        websocket) is done. It keeps its max_instances slot until then."""
        if slot.state is not State.READY:
            return
        slot.state = State.DRAINING
        slot.stop_reason = reason
        log.info("draining instance %s (%s, %d in flight)", slot.id, reason, slot.in_flight)
        if slot.in_flight == 0:
            self._spawn_stop(slot)
        self._update_gauges()

    def _spawn_stop(self, slot: Slot) -> None:
        reason, slot.stop_reason = slot.stop_reason, ""  # once
        self._tasks.spawn(self._stop(slot, reason), f"stop:{slot.id}")

    async def _stop(self, slot: Slot, reason: str) -> None:
        slot.state = State.DRAINING
        if slot.instance is not None:
            await self._safe_stop(slot.instance, reason)
        slot.state = State.STOPPED
        if self._slots.get(slot.id) is slot:
            del self._slots[slot.id]
        self.metrics.stops.labels(reason).inc()
        log.info("instance %s stopped (%s)", slot.id, reason)
        self._update_gauges()

    async def _safe_stop(self, inst: Instance, reason: str) -> None:
        for hook in self.gone_hooks:
            hook(inst)
        try:
            await self.backend.stop(inst, reason)
        except Exception as exc:  # a failed stop must not kill the pool
            log.warning("stopping %s failed: %s", inst.id, exc)

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(_STATES, 0)
        busy = 0
        for slot in self._slots.values():
            counts[slot.state] += 1
            busy += slot.in_flight
        for state, n in counts.items():
            self._state_gauges[state].set(n)
        self.metrics.in_flight.set(busy)

    # -- admin -------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for s in self._slots.values():
            inst = s.instance
            out.append(
                {
                    "id": s.id,
                    "backend": self.backend.name,
                    "owner": inst.owner_id if inst else self.ctx.owner_id,
                    "state": s.state.value,
                    "endpoint": inst.endpoint.url if inst else None,
                    "in_flight": s.in_flight,
                    "requests_served": s.served,
                    "age": round(now - s.created, 3),
                    "idle": round(now - s.idle_since, 3) if s.idle_since is not None else 0.0,
                    "retiring": s.retiring,
                    "suspect": s.suspect,
                    "meta": dict(inst.meta) if inst else {},
                }
            )
        return out

    @property
    def queued(self) -> int:
        return len(self._waiters)
