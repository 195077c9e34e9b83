"""Deadlines on the data path, cheaply: it sets them on every request. within() awaits a
future with a deadline; Deadline is one per connection, its timer moved lazily.

asyncio.timeout() costs a Timeout object, a current-task lookup, a reschedule and an
uncancel dance per use; one timer handle that fails the future does the same job."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _expire(fut: asyncio.Future[T]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def within(fut: asyncio.Future[T], seconds: float) -> T:
    """`await fut`; TimeoutError after `seconds`. On expiry the future itself fails with
    TimeoutError, so whoever else holds it sees it done. Cancelling the awaiting task
    cancels the future, as a plain await does."""
    if fut.done() or not math.isfinite(seconds):
        return await fut
    timer = fut.get_loop().call_later(seconds, _expire, fut)
    try:
        return await fut
    finally:
        timer.cancel()


class Deadline:
    """One deadline per connection on one timer, moved lazily. A connection moves its
    deadline two or three times a request; rescheduling a timer each time (a handle, a
    heap push, a cancel) was a measurable share of a request. So the pending timer stays
    when it fires no later than the new deadline, and re-arms itself for the rest when it
    fires early; only an earlier deadline reschedules. `on_expiry` runs when `due` passes."""

    __slots__ = ("_loop", "_on_expiry", "_timer", "_timer_at", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the pending timer fires
        self.due: float | None = None  # None: no deadline

    def arm(self, delay: float) -> None:
        """The deadline is `delay` seconds from now (none if `delay` <= 0 or infinite)."""
        if delay <= 0 or delay == math.inf:
            self.due = None
            return
        due = self._loop.time() + delay
        self.due = due
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._fire)

    def disarm(self) -> None:
        self.due = None  # a pending timer finds no deadline and lapses

    def cancel(self) -> None:
        """Done for good: no timer may keep the owner alive until it fires."""
        self.due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        due = self.due
        if due is None:
            return
        if self._loop.time() < due:  # the deadline moved later since this timer was set
            self._timer_at = due
            self._timer = self._loop.call_at(due, self._fire)
            return
        self.due = None
        self._on_expiry()
