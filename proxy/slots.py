"""The pool's records: an instance slot and its states, the lease a request holds on one,
a request held in the queue, and the errors the data path turns into 503/504."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from forkproxy.backends.base import Instance
from forkproxy.proxy.policy import InstanceView, Phase


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


STATES = tuple(State)
PHASES: dict[State, Phase] = {
    State.STARTING: "starting",
    State.READY: "ready",
    State.DRAINING: "draining",
}
LIVE = tuple(PHASES)  # states that hold an instance slot (max_instances counts them)


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


class BackendDown(PoolError):
    """The backend can start nothing (its engine is down): told at once, not after a wait."""

    status = 503
    reason = "backend_down"


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
    probe_error: str = ""  # what the last readiness probe got, for a start timeout's log
    stop_reason: str = ""  # DRAINING: why; cleared once its stop is under way
    solo: bool = False  # no other start was under way when it began
    working: bool = False  # its app works on after a response (BackendContext.on_working)
    memory: int | None = None  # bytes it held when last measured (pool.max_memory set)

    def view(self) -> InstanceView:
        return InstanceView(
            id=self.id,
            phase=PHASES[self.state],
            # work after a response counts as one request: the policy neither stops the
            # instance as idle nor as surplus while it lasts
            in_flight=self.in_flight + self.working,
            idle_since=self.idle_since,
            retiring=self.retiring,
            suspect=self.suspect,
        )


@dataclass(eq=False)
class Lease:
    slot: Slot
    queued: float  # seconds held in the queue
    cold: bool  # waited on an instance that started for it
    first: bool = False  # the instance's first request: its app's lazy set-up runs now
    released: bool = False
    # a strike against the instance, counted when the lease is released
    broken: bool = False

    @property
    def instance(self) -> Instance:
        assert self.slot.instance is not None
        return self.slot.instance

    @property
    def instance_id(self) -> str:
        return self.slot.id

    def mark_broken(self) -> None:
        """The request failed in transport: the instance may be gone (Pool._suspect)."""
        self.broken = True


@dataclass(eq=False)
class Waiter:
    fut: asyncio.Future[Slot]
    arrived: float
    first: bool = False  # the slot it was given had served nothing before
