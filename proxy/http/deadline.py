"""Awaiting a future with a deadline, cheaply: the data path does it on every request.

asyncio.timeout() costs a Timeout object, a current-task lookup, a reschedule and an
uncancel dance per use; one timer handle that fails the future does the same job."""

from __future__ import annotations

import asyncio
import math
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
