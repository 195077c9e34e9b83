"""The shared pieces of the paused pools and owned starts (docker and swarm backends), on
their own: Refill tops a pool up two at a time and retries after a failure; Starts keeps a
start running when its caller is cancelled and stops what it made as abandoned."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from forkproxy.backends.base import Endpoint, Instance
from forkproxy.backends.errors import BackendConfigError, StartError
from forkproxy.backends.support.refill import Refill
from forkproxy.backends.support.starts import Starts
from forkproxy.backends.support.tasks import TaskSet
from tests.conftest import eventually

log = logging.getLogger("test")


class Spares:
    """A pool whose spares are parked by a coroutine that may be told to fail."""

    def __init__(self, size: int) -> None:
        self.held: list[int] = []
        self.fail = 0  # this many next parks fail
        self.most_at_once = 0
        self._now = 0
        self.refill = Refill(size, lambda: len(self.held), self.park_one, log)

    async def park_one(self) -> None:
        self._now += 1
        self.most_at_once = max(self.most_at_once, self._now)
        try:
            await asyncio.sleep(0.01)
            if self.fail:
                self.fail -= 1
                raise StartError("no luck", reason="exited_before_ready")
            self.held.append(len(self.held))
        finally:
            self._now -= 1


async def test_fill_tops_up_two_at_a_time() -> None:
    pool = Spares(5)
    await pool.refill.fill(deadline=None)
    assert len(pool.held) == 5
    assert pool.most_at_once == 2
    assert pool.refill.filling == 0


async def test_prime_turns_a_failure_into_a_config_error_naming_the_image() -> None:
    pool = Spares(1)
    pool.fail = 1
    with pytest.raises(BackendConfigError, match="from image 'app:1': no luck"):
        await pool.refill.prime(asyncio.get_running_loop().time() + 5, "app:1")


async def test_run_refills_when_set_and_retries_after_a_failure() -> None:
    pool = Spares(2)
    tasks = TaskSet("t")
    tasks.spawn(pool.refill.run(), "refill")
    pool.fail = 1
    pool.refill.set()
    await eventually(lambda: len(pool.held) == 2, 5, "the pool refilled after a failure")
    pool.held.clear()  # both taken
    pool.refill.set()
    await eventually(lambda: len(pool.held) == 2, 5, "the pool refilled again")
    pool.refill.stop()
    await tasks.aclose()


async def test_a_taken_spare_is_replaced_only_after_it_settled() -> None:
    """taken(): the replacement's park starts `settle` seconds after the take, not at once
    (it would share the engine and the CPU with the taker's first request)."""
    pool = Spares(1)
    tasks = TaskSet("t")
    await pool.refill.fill(deadline=None)
    tasks.spawn(pool.refill.run(), "refill")
    pool.held.clear()  # taken
    t0 = time.monotonic()
    pool.refill.taken(settle=0.3)
    await asyncio.sleep(0.15)
    assert pool.held == [] and pool.refill.filling == 0  # still settling
    await eventually(lambda: len(pool.held) == 1, 5, "the pool refilled")
    assert time.monotonic() - t0 >= 0.3
    pool.refill.stop()
    await tasks.aclose()


def instance(iid: str) -> Instance:
    return Instance(iid, "fake", Endpoint("127.0.0.1", 1))


async def test_a_cancelled_callers_instance_is_stopped_as_abandoned() -> None:
    stopped: list[tuple[str, str]] = []
    made = asyncio.Event()
    go = asyncio.Event()

    async def stop(inst: Instance, reason: str) -> None:
        stopped.append((inst.id, reason))

    async def slow_start() -> Instance:
        await go.wait()
        made.set()
        return instance("i1")

    background = TaskSet("bg")
    starts = Starts("fake", log, stop, background)
    caller = asyncio.ensure_future(starts.run("i1", slow_start()))  # noqa: TID251
    await asyncio.sleep(0.01)
    caller.cancel()  # the pool's start timeout
    with pytest.raises(asyncio.CancelledError):
        await caller
    go.set()  # the start finishes anyway, and what it made is not leaked
    await eventually(lambda: stopped == [("i1", "abandoned")], 5, "the abandoned stop")
    await background.aclose()


async def test_closing_lets_starts_finish_and_refuses_new_ones() -> None:
    async def stop(inst: Instance, reason: str) -> None:
        raise AssertionError("nothing is abandoned while closing: the backend sweeps")

    async def start() -> Instance:
        await asyncio.sleep(0.05)
        return instance("i2")

    starts = Starts("fake", log, stop, TaskSet("bg"))
    running = asyncio.ensure_future(starts.run("i2", start()))  # noqa: TID251
    await asyncio.sleep(0.01)
    await starts.join()
    assert (await running).id == "i2"
    with pytest.raises(StartError, match="closing") as err:
        await starts.run("i3", start())
    assert err.value.reason == "closing"


async def test_warm_spares_in_use_count_towards_the_size_but_one_stays_parked() -> None:
    """A pool whose taken spares come back when drained (docker recycling): `size` bounds
    parked + warm ones in use, and one spare is still kept parked while all serve."""
    pool = Spares(4)
    serving = 0
    pool.refill = Refill(4, lambda: len(pool.held), pool.park_one, log, warm=lambda: serving)
    await pool.refill.fill(deadline=None)
    assert len(pool.held) == 4
    del pool.held[:3]  # three taken, serving
    serving = 3
    assert pool.refill.need() == 0
    await pool.refill.fill(deadline=None)
    assert len(pool.held) == 1
    pool.held.clear()  # the fourth taken too: all four serve
    serving = 4
    assert pool.refill.need() == 1
    await pool.refill.fill(deadline=None)
    assert len(pool.held) == 1
    serving = 2  # two of them removed (retired, died): replaced
    assert pool.refill.need() == 1
    await pool.refill.fill(deadline=None)
    assert len(pool.held) == 2
    assert Spares(3).refill.need() == 3  # no warm count (swarm): size alone
