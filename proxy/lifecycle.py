"""Instance lifecycle, the pool's half that talks to the backend: start (and probe until
ready), fail, drain and stop, the per-state gauges and the admin listing. A mixin of Pool:
it shares the pool's state, and asks the pool's data and control path (dispatch, rebalance)
to act on what changed."""

from __future__ import annotations

import abc
import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from forkproxy.backends.base import Backend, BackendContext, Instance
from forkproxy.backends.errors import BackendError
from forkproxy.backends.support.probe import wait_ready
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.proxy.config import PoolConfig
from forkproxy.proxy.demand import StartCost
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.slots import STATES, NoInstance, Slot, State, Waiter
from forkproxy.proxy.templates_memory import Templates

log = logging.getLogger("forkproxy.pool")
MEMORY_EVERY = 1.0  # seconds between measurements of every instance (a memory limit set)
# without a limit, memory is measured for the live page and metrics every this many periods
MEMORY_QUIET_EVERY = 5


def over_memory(sizes: Mapping[str, int], limit: int) -> list[tuple[str, int]]:
    """The instances (id, bytes) holding more than `limit` bytes, largest first; none
    when there is no limit (0)."""
    if limit <= 0:
        return []
    return sorted(((i, n) for i, n in sizes.items() if n > limit), key=lambda x: -x[1])


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class Lifecycle(abc.ABC):
    # The pool's state this half reads and changes (Pool.__init__ sets it).
    cfg: PoolConfig
    backend: Backend
    ctx: BackendContext
    metrics: Metrics
    clock: Callable[[], float]
    gone_hooks: list[Callable[[Instance], None]]
    stopped_hooks: list[Callable[[], None]]
    admit_start: Callable[[], bool] | None
    measure_memory: bool  # budget.max_memory asks for every second's measurement
    templates: Templates
    _slots: dict[str, Slot]
    _waiters: deque[Waiter]
    _tasks: TaskSet
    _start_cost: StartCost
    _failures: int
    _blocked_until: float
    _closing: bool
    _wake: asyncio.Event
    _probe_session: aiohttp.ClientSession | None
    _state_gauges: dict[State, Any]
    recent_failures: deque[dict[str, Any]]

    # The data and control path's reactions (Pool).
    @abc.abstractmethod
    def _dispatch(self) -> None: ...

    @abc.abstractmethod
    def _after_change(self) -> None: ...

    @abc.abstractmethod
    def _rebalance(self) -> None: ...

    def _launch_start(self, reasons: tuple[str, ...]) -> None:
        if self.admit_start is not None and not self.admit_start():
            return  # the machine's budget is full: asked again on a later tick or wake
        sid = "i-" + secrets.token_hex(4)
        solo = not any(s.state is State.STARTING for s in self._slots.values())
        slot = Slot(id=sid, created=self.clock(), solo=solo)
        self._slots[sid] = slot
        log.info("starting instance %s (%s)", sid, ",".join(reasons) or "demand")
        self._tasks.spawn(self._start(slot), f"start:{sid}")

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
                if not str(exc):  # the pool's own start_timeout
                    exc = TimeoutError(self._timed_out(slot))
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

    def _timed_out(self, slot: Slot) -> str:
        """What a start timeout waited on: asyncio's TimeoutError says nothing."""
        secs = f"{self.cfg.start_timeout:g}s"
        if slot.instance is None:
            return f"the backend did not return an instance within {secs}"
        url = slot.instance.endpoint.url + self.cfg.readiness_path
        last = slot.probe_error or "no probe finished"
        return f"not ready within {secs}: GET {url} last got {last}"

    async def _probe(self, slot: Slot, inst: Instance) -> None:
        assert self._probe_session is not None
        url = inst.endpoint.url + self.cfg.readiness_path

        def missed(why: str) -> None:
            slot.probe_error = why

        if not await wait_ready(self._probe_session, url, stop=slot.died, on_miss=missed):
            raise BackendError(f"instance died while starting: {slot.death_reason}", reason="died")

    def _start_failed(self, slot: Slot, reason: str, exc: BaseException) -> None:
        self._slots.pop(slot.id, None)
        self._failures += 1
        backoff = min(5.0, 0.05 * 2 ** (self._failures - 1))
        self._blocked_until = self.clock() + backoff
        self.metrics.starts.labels(reason).inc()
        self.recent_failures.append(
            {"t": time.time(), "instance": slot.id, "reason": reason, "error": str(exc)}
        )
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

    @property
    def serve_problem(self) -> str | None:
        """Why a request arriving now could not be served, or None. Nothing is ready and
        the last start(s) failed (the backend down, an app that crashes or never answers
        its readiness path): a start may be under way or backing off, but there is no
        reason to expect it to work. Scaled to zero with no failure is not a problem: the
        next request starts one."""
        if self._failures == 0 or any(s.state is State.READY for s in self._slots.values()):
            return None
        last = self.recent_failures[-1] if self.recent_failures else {}
        return (
            f"no instance could be started ({self._failures} failed in a row; last: "
            f"{last.get('reason', '?')}: {last.get('error', '')})"
        )

    @property
    def can_serve(self) -> bool:
        return self.serve_problem is None

    def _recover(self) -> None:
        """Without traffic nothing starts an instance, and a pool that cannot serve (its
        /readyz 503, so a load balancer sends it nothing) would stay so after the cause
        is gone: once the backoff allows, one start tries again on its own."""
        if (
            self._failures
            and self.clock() >= self._blocked_until
            and len(self._slots) < self.cfg.max_instances
            and not any(s.state in (State.READY, State.STARTING) for s in self._slots.values())
        ):
            self._launch_start(("recover",))

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

    def on_working(self, instance_id: str, working: bool) -> None:
        """Backends call this when an instance's app works on after its responses ended
        (a BackgroundTask), and again when it is done: until then it is not idle, and a
        stop (idle, surplus, max_requests) waits for it as for a request in flight."""
        slot = self._slots.get(instance_id)
        if slot is None or slot.working == working:
            return
        slot.working = working
        if working:
            slot.idle_since = None
        elif slot.in_flight == 0:
            self._now_quiet(slot, self.clock())
            self._rebalance()

    async def _watch_memory(self) -> None:
        """Once a second while a memory limit asks (pool.max_memory, or budget.max_memory
        through `measure_memory`; a reload may set either), else every few seconds for
        the live page: measure every ready instance and the templates, and retire
        instances over pool.max_memory (a leak, a cache without bound). Retired like an
        idle one: no new requests, its in-flight ones finish, then it stops; the pool
        starts another as demand asks."""
        tick = 0
        while True:
            await asyncio.sleep(MEMORY_EVERY)
            tick += 1
            quiet = tick % MEMORY_QUIET_EVERY == 0
            if self.cfg.max_memory or self.measure_memory or quiet:
                await self._check_memory(self.cfg.max_memory)

    async def _check_memory(self, limit: int) -> None:
        slots = [s for s in self._slots.values() if s.state is State.READY and s.instance]
        known = [s.instance for s in self._slots.values() if s.instance]
        try:
            await self.templates.measure(known)
            if not slots:
                self.metrics.template_memory.set(self.templates.bytes or 0)
                self.metrics.memory.set(0)
                return
            sizes = await self.backend.memory([s.instance for s in slots if s.instance])
        except Exception as exc:  # cannot measure now: try again next time
            log.warning("measuring instance memory failed: %r", exc)
            return
        self.metrics.template_memory.set(self.templates.bytes or 0)
        for s in slots:
            s.memory = sizes.get(s.id, s.memory)
        self.metrics.instance_memory.set(max(sizes.values(), default=0))
        self.metrics.memory.set(sum(s.memory or 0 for s in slots))
        over = over_memory(sizes, limit)
        for sid, size in over:
            slot = self._slots.get(sid)
            if slot is None or slot.state is not State.READY:
                continue  # stopped or draining while it was measured
            log.warning(
                "instance %s holds %s, over pool.max_memory %s: retiring it (%d in flight)",
                sid,
                mib(size),
                mib(limit),
                slot.in_flight,
            )
            self._begin_stop(slot, "max_memory")
        if over:
            self._rebalance()

    def _now_quiet(self, slot: Slot, now: float) -> None:
        """Its last request is done: idle from now on, unless its app is still at work;
        if it was waiting to stop, it stops now."""
        if slot.working:
            return
        slot.idle_since = now
        if slot.retiring and slot.state is State.READY:
            self._begin_stop(slot, "max_requests")
        elif slot.state is State.DRAINING and slot.stop_reason:
            self._spawn_stop(slot)  # drained: its last request is done

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
        if slot.in_flight == 0 and not slot.working:
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
        for hook in self.stopped_hooks:  # room made (the machine's budget)
            hook()

    async def _safe_stop(self, inst: Instance, reason: str) -> None:
        for hook in self.gone_hooks:
            hook(inst)
        try:
            await self.backend.stop(inst, reason)
        except Exception as exc:  # a failed stop must not kill the pool
            log.warning("stopping %s failed: %s", inst.id, exc)

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(STATES, 0)
        busy = 0
        for slot in self._slots.values():
            counts[slot.state] += 1
            busy += slot.in_flight
        for state, n in counts.items():
            self._state_gauges[state].set(n)
        self.metrics.in_flight.set(busy)

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
                    "working": s.working,
                    "memory": s.memory,
                    "meta": dict(inst.meta) if inst else {},
                }
            )
        return out
