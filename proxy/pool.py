"""The pool: the bounded FIFO hold queue, assignment (pack or least-loaded), and the control
loop that turns policy decisions into backend calls. Instance records and errors live in
proxy/slots.py, starting and stopping instances in proxy/lifecycle.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from forkproxy.backends.base import Backend, BackendContext, Instance
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.proxy.budget import Held
from forkproxy.proxy.budget import State as BudgetState
from forkproxy.proxy.config import PoolConfig
from forkproxy.proxy.demand import DemandTrace, StartCost
from forkproxy.proxy.lifecycle import Lifecycle
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.orphans import OrphanReaper
from forkproxy.proxy.policy import (
    KEEP_ALIVE_MAX,
    Snapshot,
    decide,
    keep_alive,
    target,
)
from forkproxy.proxy.slots import (
    LIVE,
    STATES,
    BackendDown,
    HoldTimeout,
    Lease,
    NoInstance,
    PoolClosed,
    PoolError,
    QueueFull,
    Slot,
    State,
    Waiter,
)
from forkproxy.proxy.templates_memory import Templates

log = logging.getLogger("forkproxy.pool")

__all__ = [
    "HoldTimeout",
    "Lease",
    "NoInstance",
    "Pool",
    "PoolClosed",
    "PoolError",
    "QueueFull",
    "Slot",
    "State",
]
# the last start failures with their reasons, for the admin's live page
FAILURES_KEPT = 20


class LeaseScope:
    """What Pool.lease returns: acquire on entry, release on exit (a class, not an async
    generator: it sits on every request's path)."""

    __slots__ = ("_deadline", "_lease", "_pool")

    def __init__(self, pool: Pool, deadline: float) -> None:
        self._pool = pool
        self._deadline = deadline
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self._lease = await self._pool.acquire(self._deadline)
        return self._lease

    async def __aexit__(self, *exc_info: object) -> None:
        lease = self._lease
        if lease is not None:
            self._pool.release(lease, broken=lease.broken)


class Pool(Lifecycle):
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
        self._waiters: deque[Waiter] = deque()
        self._tasks = TaskSet("pool")
        self._pack = cfg.routing == "pack"
        self._target = target(cfg)
        self._in_flight = 0  # requests assigned to instances and not released
        self._queued_since = 0.0  # when the queue last went from empty to non-empty
        self._start_cost = StartCost()
        self._demand = DemandTrace(cfg.tick, max(cfg.idle_ttl or 0.0, KEEP_ALIVE_MAX) + 1.0)
        self._failures = 0
        self._blocked_until = 0.0
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        self._closing = False
        self._down = ""  # the backend's down_reason while it has one
        self._wake = asyncio.Event()
        self._probe_session: aiohttp.ClientSession | None = None
        self._state_gauges = {st: metrics.instances.labels(st.value) for st in STATES}
        metrics.spares.set_function(lambda: backend.spares)  # read at scrape time
        self.gone_hooks: list[Callable[[Instance], None]] = []  # e.g. drop pooled connections
        # the machine's budget (proxy/machine.py), asked before each start; None: no budget
        self.admit_start: Callable[[], bool] | None = None
        self.measure_memory = False
        self.templates = Templates()
        self.stopped_hooks: list[Callable[[], None]] = []  # after an instance is gone
        ctx.on_death = self.on_death
        ctx.on_working = self.on_working

    def __repr__(self) -> str:
        by: dict[str, int] = {}
        for s in self._slots.values():
            by[s.state.value] = by.get(s.state.value, 0) + 1
        busy = sum(s.in_flight for s in self._slots.values())
        return f"<Pool {by} {busy} in flight, {len(self._waiters)} queued>"

    # -- the pool's own start and shutdown ------------------------------------------

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
        self._tasks.spawn(self._watch_memory(), "memory")
        self._rebalance()

    def reconfigure(self, cfg: PoolConfig) -> None:
        """New settings in place (a reload): the next assignment and scale decision use
        them; a larger max_concurrency takes held requests at once."""
        self.cfg = cfg.with_concurrency_hint(self.backend.concurrency_hint())
        self._pack = self.cfg.routing == "pack"
        self._target = target(self.cfg)
        self._demand.span = max(self.cfg.idle_ttl or 0.0, KEEP_ALIVE_MAX) + 1.0
        if not self._closing:
            self._dispatch()
            self._after_change()

    async def _reap_orphans(self) -> None:
        """Stop what stopped replicas of this pool name left; then keep doing it (and keep
        this run's lease fresh) every orphan_timeout/6 while the pool runs."""
        reaper = OrphanReaper(
            self.backend,
            self.ctx.owner_id,
            self.metrics,
            self.cfg.orphan_timeout,
            self.clock,
            # its listing shows this run's templates too (measured with the instances)
            on_listed=lambda found: self.templates.learn(found, self.ctx.owner_id),
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

    def _assign(self, slot: Slot) -> bool:
        """Count a request on `slot`; True if it is the instance's first."""
        self._in_flight += 1
        slot.in_flight += 1
        slot.served += 1
        slot.idle_since = None
        slot.last_used = self.clock()
        cap = self.cfg.max_requests_per_instance
        if cap and slot.served >= cap:
            slot.retiring = True
        return slot.served == 1

    async def acquire(self, deadline: float) -> Lease:
        """A slot on a READY instance, or PoolError. `deadline` is on self.clock."""
        if self._closing:
            raise PoolClosed("shutting down")
        arrived = self.clock()
        self.ctx.gaps.arrival(arrived)
        if not self._waiters and (slot := self._pick()) is not None:
            first = self._assign(slot)
            self._record(arrived)
            if slot.in_flight >= self._target:
                self._rebalance()  # maybe start one ahead of saturation
            return Lease(slot, 0.0, False, first)
        if self._failing_fast(arrived):
            self._demand.record(arrived, self._in_flight + 1)
            raise NoInstance("instance starts keep failing; backing off")
        if len(self._waiters) >= self.cfg.max_queue:
            # refused, but still demand: with max_queue = 0 this is the only way a start
            # is ever asked for
            self._demand.refuse(arrived)
            self._demand.record(arrived, self._in_flight + 1)
            self._rebalance()
            raise QueueFull("queue full")
        w = Waiter(asyncio.get_running_loop().create_future(), arrived)
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
        return Lease(slot, queued, cold, w.first)

    def _failing_fast(self, now: float) -> bool:
        """Starts failed start_retries times in a row, nothing is ready or starting, and
        the backoff has not expired: a request would only wait for the next failure, so
        it is answered at once (waiters already queued were told the same)."""
        return (
            self._failures >= self.cfg.start_retries
            and now < self._blocked_until
            and not any(s.state in (State.READY, State.STARTING) for s in self._slots.values())
        )

    def _drop_waiter(self, w: Waiter) -> None:
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

    def lease(self, deadline: float) -> LeaseScope:
        """`async with pool.lease(deadline) as lease:` a slot for the body of the with,
        released exactly once as it ends, whether it returns, raises or is cancelled;
        `lease.mark_broken()` inside makes the release a strike. PoolError on entry when
        no slot comes (knative's activator scopes capacity the same way: throttler.Try)."""
        return LeaseScope(self, deadline)

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
            self._now_quiet(slot, now)
        if not self._in_flight and not self._waiters:
            self.ctx.gaps.idle(now)
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
            w.first = self._assign(slot)
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
            gaps = self.ctx.gaps
            held = self._gap_window(cost)
            settings["learned_gap_window"] = (
                f"{held:.3g}s (last instance held; {len(gaps)} idle gaps seen)"
                if held
                else f"none ({len(gaps)} idle gaps seen)"
            )
        settings["measured_start_cost"] = f"{cost * 1000:.3g} ms"
        return settings

    def snapshot(self) -> Snapshot:
        now = self.clock()
        self._record(now)
        views = tuple(s.view() for s in self._slots.values() if s.state in LIVE)
        cost = self._cost(now)
        window = keep_alive(self.cfg, cost)
        gap_window = self._gap_window(cost)
        # rising over the last second and still rising over the last half: a step is
        # growth once, not for the whole second the step stays in the window
        growth = min(self._demand.growth(now, 1.0), self._demand.growth(now, 0.5))
        self.metrics.start_cost.set(cost)
        self.metrics.keep_alive.set(window)
        self.metrics.gap_window.set(gap_window)
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
            gap_window=gap_window,
        )

    def _gap_window(self, cost: float) -> float:
        """The last instance's learned hold (policy.Snapshot.gap_window): only under
        idle_ttl = "auto"; a fixed idle_ttl is the operator's choice and stands alone."""
        if self.cfg.idle_ttl is not None:
            return 0.0
        return self.ctx.gaps.window(cost, KEEP_ALIVE_MAX)

    def tick(self) -> None:
        """One control-path step: what the periodic loop runs (tests call it directly
        after advancing the clock)."""
        self._rebalance()

    def _rebalance(self) -> None:
        if self._closing:
            return
        down = self._backend_down()
        d = decide(self.snapshot(), self.cfg)
        for _ in range(0 if down else d.start):
            self._launch_start(d.reasons)
        if not d.start:
            self._recover()
        for sid, reason in d.stops:
            slot = self._slots.get(sid)
            if slot is not None:
                self._begin_stop(slot, reason)
        self._update_gauges()

    def _backend_down(self) -> bool:
        """The backend says no start can work (its engine is down): whoever waits is told
        at once (503) and no start is tried, since each would fail and grow the start
        backoff; once it is back, starts begin at once, without that backoff."""
        reason = self.backend.down_reason
        if reason is None:
            if self._down:
                log.info("backend is back (was: %s): starting instances again", self._down)
                self._down = ""
                self._failures = 0
                self._blocked_until = 0.0
            return False
        if not self._down:
            log.warning("backend down: %s; answering 503 until it is back", reason)
        self._down = reason
        while self._waiters:
            w = self._waiters.popleft()
            if not w.fut.done():
                w.fut.set_exception(BackendDown(reason))
        self.metrics.queue_depth.set(0)
        return True

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

    # -- the machine's budget ----------------------------------------------------------

    def budget_load(self) -> tuple[tuple[Held, ...], float]:
        """Its instances as the budget sees them, and the measured start cost."""
        held = []
        for s in self._slots.values():
            if s.state is State.STARTING:
                state: BudgetState = "starting"
            elif s.state is State.READY and not s.in_flight and not s.working:
                state = "idle"
            elif s.state is State.READY:
                state = "busy"
            else:
                state = "stopping"
            held.append(Held(s.id, state, s.memory or 0))
        return tuple(held), self._cost(self.clock())

    def memory_held(self) -> tuple[int | None, int | None]:
        """(instances, templates) bytes at the last measurement; None: not measured."""
        sizes = [s.memory for s in self._slots.values() if s.memory is not None]
        return (sum(sizes) if sizes else None), self.templates.bytes

    def wake(self) -> None:
        """Tick now, not at the next period: the budget made room for a start."""
        self._wake.set()

    def give_back(self, instance_id: str, reason: str) -> None:
        """Out of rotation for the budget: stopped once its requests are done."""
        if (slot := self._slots.get(instance_id)) is not None:
            self._begin_stop(slot, reason)

    # -- admin -------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiters)
