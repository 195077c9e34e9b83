"""within(): a future awaited with a deadline by one timer handle (the data path's upstream
header timeout), on a real event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from forkproxy.proxy.http.deadline import within


async def test_result_before_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    loop.call_later(0.01, fut.set_result, 7)
    assert await within(fut, 5.0) == 7


async def test_deadline_fails_the_future_with_timeout_error() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await within(fut, 0.05)
    assert 0.04 <= time.monotonic() - t0 < 2.0
    # whoever else holds the future sees it done, with the same error
    assert fut.done() and isinstance(fut.exception(), TimeoutError)


async def test_an_exception_set_in_time_is_raised_as_is() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.01, fut.set_exception, ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError, match="gone"):
        await within(fut, 5.0)


async def test_cancelling_the_waiter_cancels_the_future_and_leaves_no_timer() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.get_running_loop().create_task(within(fut, 0.05))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled()
    await asyncio.sleep(0.08)  # the timer was cancelled with the wait: nothing fires late
    assert fut.cancelled()


async def test_done_future_and_no_deadline() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    done.set_result("x")
    assert await within(done, 0.0) == "x"
    later: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.01, later.set_result, "y")
    assert await within(later, float("inf")) == "y"
