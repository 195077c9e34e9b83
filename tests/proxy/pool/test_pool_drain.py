"""Scale-in and the review's pool findings against the real fork backend: surplus and
out-of-rotation instances drain before they stop, waiters whose client left are not demand,
max_queue = 0 still starts instances, warm spares do not churn, a fork is reaped in well
under a second by default. The pool reads a clock the tests advance."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from forkproxy import backends
from forkproxy.backends.base import BackendContext
from forkproxy.proxy.config import PoolConfig, parse
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.policy import KEEP_ALIVE_MIN, keep_alive
from forkproxy.proxy.pool import Lease, Pool, State
from tests.conftest import eventually, proxy_config, run_proxy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@asynccontextmanager
async def clocked_pool(**pool: object) -> AsyncIterator[tuple[Pool, Clock]]:
    """A Pool on the real fork backend whose decisions read a clock the test advances
    (the control loop still ticks, on that frozen clock)."""
    cfg = parse(proxy_config(pool=dict(pool)))
    ctx = BackendContext(
        pool_name=cfg.server.name, owner_id=f"{cfg.server.name}-owner", start_timeout=10.0
    )
    backend = backends.load("process").create_backend(cfg.backend, ctx)
    clock = Clock()
    p = Pool(cfg.pool, backend, ctx, Metrics(), clock=clock)
    await p.start()
    try:
        yield p, clock
    finally:
        await p.aclose()


def stops(p: Pool, reason: str) -> float:
    return p.metrics.stops.labels(reason)._value.get()


def slots(p: Pool) -> dict[str, str]:
    return {d["id"]: d["state"] for d in p.describe()}


async def test_surplus_busy_instance_drains_before_it_stops() -> None:
    async with clocked_pool(max_concurrency=2, routing="least_loaded", idle_ttl="auto") as (
        p,
        clock,
    ):
        leases = await asyncio.gather(*(p.acquire(clock() + 10) for _ in range(4)))
        by_slot: dict[str, list[Lease]] = {}
        for lease in leases:
            by_slot.setdefault(lease.slot.id, []).append(lease)
        assert sorted(len(v) for v in by_slot.values()) == [2, 2]
        for held in by_slot.values():
            p.release(held.pop())  # one in flight on each: the load fits in one instance
        clock.advance(1.0)  # past the fork's keep-alive window (0.5 s)
        p.tick()
        state = slots(p)
        assert sorted(state.values()) == ["draining", "ready"], state
        gone_id = next(i for i, s in state.items() if s == "draining")
        (gone_lease,) = by_slot[gone_id]
        # out of rotation but alive: its request is still being served
        assert await p.backend.alive(gone_lease.instance)
        extra = await p.acquire(clock() + 10)
        assert extra.slot.id != gone_id
        assert gone_lease.slot.state is State.DRAINING
        p.release(gone_lease)  # its last request done: now it stops
        await eventually(lambda: gone_id not in slots(p), 10, "drained instance to stop")
        assert stops(p, "surplus") == 1
        for lease in [*leases, extra]:
            p.release(lease)


async def test_transport_strikes_drain_instead_of_cutting_streams() -> None:
    async with clocked_pool(max_concurrency=4, max_instances=1) as (p, clock):
        stream = await p.acquire(clock() + 10)  # a long stream on the instance
        for _ in range(3):
            lease = await p.acquire(clock() + 10)  # waits until the liveness check clears it
            assert lease.slot is stream.slot
            p.release(lease, broken=True)
        assert stream.slot.state is State.DRAINING
        assert await p.backend.alive(stream.instance)  # not killed mid-stream
        p.release(stream)
        await eventually(lambda: slots(p) == {}, 10, "the struck instance to stop")
        assert stops(p, "unreachable") == 1


async def test_a_waiter_whose_client_left_is_dropped_and_not_demand() -> None:
    async with clocked_pool(max_concurrency=1, max_instances=1) as (p, clock):
        busy = await p.acquire(clock() + 10)
        waiter = asyncio.ensure_future(p.acquire(clock() + 10))  # noqa: TID251
        await eventually(lambda: p.snapshot().waiting == 1, 5, "the request to wait")
        waiter.cancel()  # what the data path does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert p.snapshot().waiting == 0 and p.queued == 0
        p.release(busy)
        assert busy.slot.in_flight == 0  # the slot was not handed to the gone waiter
        clock.advance(0.25)
        assert p.snapshot().waiting == 0
        p.tick()
        assert len(slots(p)) == 1  # nothing started for it


async def test_max_queue_zero_still_starts_an_instance() -> None:
    async with run_proxy(pool={"max_queue": 0}) as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 503  # nothing may wait for the start it asked for

        async def serving() -> bool:
            return [i["state"] for i in await p.instances()] == ["ready"]

        await eventually(serving, 10, "an instance started for the refused request")
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200


async def test_warm_spares_do_not_churn() -> None:
    async with run_proxy(pool={"warm_pool": 2, "idle_ttl": "100ms"}) as p:

        async def two_ready() -> bool:
            return [i["state"] for i in await p.instances()] == ["ready", "ready"]

        await eventually(two_ready, 10, "two warm spares")
        await asyncio.sleep(0.6)  # six times idle_ttl, a dozen ticks
        text = await (await p.session.get(p.admin + "/metrics")).text()
        assert 'forkproxy_instance_starts_total{result="ok"} 2.0' in text
        assert "forkproxy_instance_stops_total{" not in text


async def test_default_keep_alive_reaps_a_fork_within_a_second() -> None:
    async with run_proxy(pool={"idle_ttl": "auto"}) as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        t0 = asyncio.get_running_loop().time()

        async def gone() -> bool:
            return await p.instances() == []

        await eventually(gone, 5, "the idle fork to be reaped")
        assert asyncio.get_running_loop().time() - t0 < 1.5
        text = await (await p.session.get(p.admin + "/metrics")).text()
        # the keep-alive the pool ran is the one priced by the start cost it measured
        gauges = dict(
            line.split(" ", 1)
            for line in text.splitlines()
            if line.startswith(("forkproxy_keep_alive_seconds ", "forkproxy_start_cost_seconds "))
        )
        cost = float(gauges["forkproxy_start_cost_seconds"])
        ttl = float(gauges["forkproxy_keep_alive_seconds"])
        assert ttl == pytest.approx(keep_alive(PoolConfig(), cost))
        assert KEEP_ALIVE_MIN <= ttl < 1.0


_BAD_APP = textwrap.dedent(
    """
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
    def serve(c):
        buf = b""
        while True:
            data = c.recv(65536)
            if not data:
                return
            buf += data
            while b"\\r\\n\\r\\n" in buf:
                head, _, buf = buf.partition(b"\\r\\n\\r\\n")
                if head.split(b" ")[1].startswith(b"/bad"):
                    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: nope\\r\\n\\r\\n")
                    c.close()
                    return
                c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)


async def test_malformed_responses_are_not_strikes(tmp_path: Path) -> None:
    app = tmp_path / "bad_app.py"
    app.write_text(_BAD_APP)
    backend = {"mode": "exec", "command": [sys.executable, str(app), "{port}"]}
    async with run_proxy(backend=backend) as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        (first,) = [i["id"] for i in await p.instances()]
        for _ in range(4):
            async with p.session.get(p.url + "/bad") as r:
                assert r.status == 502
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        insts = await p.instances()
        assert [(i["id"], i["state"], i["suspect"]) for i in insts] == [(first, "ready", False)]
        text = await (await p.session.get(p.admin + "/metrics")).text()
        assert 'reason="unreachable"' not in text
