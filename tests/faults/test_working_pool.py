"""The pool's side of work after the response (on_working), on the real fork backend
and a clock the test advances: a working instance is neither idle nor stopped."""

from __future__ import annotations

from forkproxy.proxy.pool import State
from tests.proxy.pool.test_pool_drain import clocked_pool, slots


async def test_a_working_instance_is_not_idle_until_its_work_is_done() -> None:
    async with clocked_pool(idle_ttl="1s") as (p, clock):
        lease = await p.acquire(clock() + 10)
        sid = lease.slot.id
        p.on_working(sid, True)
        p.release(lease)
        clock.advance(30.0)
        p.tick()
        assert slots(p) == {sid: "ready"}  # past idle_ttl, but at work
        p.on_working(sid, False)
        clock.advance(30.0)
        p.tick()
        assert slots(p).get(sid, "gone") in ("draining", "gone")


async def test_a_retiring_instance_stops_only_once_its_work_is_done() -> None:
    async with clocked_pool(max_requests_per_instance=1) as (p, clock):
        lease = await p.acquire(clock() + 10)
        slot = lease.slot
        p.on_working(slot.id, True)
        p.release(lease)  # its one request is done, its background job is not
        assert slot.state is State.READY and slot.retiring and slot.idle_since is None
        p.on_working(slot.id, False)
        assert slot.state in (State.DRAINING, State.STOPPED)
