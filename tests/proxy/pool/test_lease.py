"""pool.lease as a scope, on the real fork backend: the slot goes back exactly once
whether the body returns, raises or is cancelled; a lease marked broken is released as a
strike; a wait cancelled in the queue takes no slot and gives none back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from forkproxy.proxy.pool import Lease, Pool
from tests.conftest import eventually, run_proxy


@contextmanager
def counting_releases(pool: Pool) -> Iterator[list[tuple[Lease, bool]]]:
    """Every call of pool.release (the scope's exit calls it), with its broken flag; a
    second call for one lease would be a second entry (release ignores it, the count
    does not)."""
    calls: list[tuple[Lease, bool]] = []
    real = pool.release

    def spy(lease: Lease, *, broken: bool = False) -> None:
        calls.append((lease, broken))
        real(lease, broken=broken)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pool, "release", spy)
        yield calls


def in_flight(pool: Pool) -> int:
    return sum(int(d["in_flight"]) for d in pool.describe())


async def test_a_lease_is_released_once_however_its_scope_ends() -> None:
    async with run_proxy(pool={"max_concurrency": 4, "max_instances": 1}) as p:
        pool = p.proxy.pool
        deadline = pool.clock() + 10
        with counting_releases(pool) as calls:
            async with pool.lease(deadline) as normal:
                assert in_flight(pool) == 1
            assert calls == [(normal, False)] and in_flight(pool) == 0

            with pytest.raises(RuntimeError):
                async with pool.lease(deadline) as raised:
                    raise RuntimeError("the body failed")
            assert calls[1:] == [(raised, False)] and in_flight(pool) == 0

            entered = asyncio.Event()
            held: list[Lease] = []

            async def hold() -> None:
                async with pool.lease(deadline) as lease:
                    held.append(lease)
                    entered.set()
                    await asyncio.sleep(60)

            task = asyncio.ensure_future(hold())  # noqa: TID251 (cancelled and awaited here)
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert calls[2:] == [(held[0], False)] and in_flight(pool) == 0

            async with pool.lease(deadline) as broken:
                broken.mark_broken()
            assert calls[3:] == [(broken, True)] and in_flight(pool) == 0
            assert len({id(lease) for lease, _ in calls}) == len(calls) == 4


async def test_a_wait_cancelled_in_the_queue_takes_and_returns_nothing() -> None:
    async with run_proxy(pool={"max_concurrency": 1, "max_instances": 1}) as p:
        pool = p.proxy.pool
        deadline = pool.clock() + 10
        with counting_releases(pool) as calls:
            async with pool.lease(deadline) as first:

                async def second() -> None:
                    async with pool.lease(deadline):
                        raise AssertionError("the only slot is held")

                waiting = asyncio.ensure_future(second())  # noqa: TID251 (awaited here)
                await eventually(lambda: pool.queued == 1, what="the second lease queued")
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                assert pool.queued == 0 and calls == []
            assert calls == [(first, False)] and in_flight(pool) == 0
