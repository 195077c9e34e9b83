"""Every instance slot the data path takes goes back exactly once, whatever ends the
request: a normal answer, a client that leaves while held or mid-request, an instance
that dies before answering (retried, then 502) or mid-response, a websocket tunnel.
Counted on the real pool behind a real proxy and fork instances."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import aiohttp
import pytest

from forkproxy.proxy.pool import Lease
from tests.conftest import Running, eventually, run_proxy


class Leases:
    """Spies on the pool: each lease acquire handed out, each call of release."""

    def __init__(self, p: Running, mp: pytest.MonkeyPatch) -> None:
        pool = p.proxy.pool
        self.acquired: list[Lease] = []
        self.released: list[Lease] = []
        acquire, release = pool.acquire, pool.release

        async def acquire_spy(deadline: float) -> Lease:
            lease = await acquire(deadline)
            self.acquired.append(lease)
            return lease

        def release_spy(lease: Lease, *, broken: bool = False) -> None:
            self.released.append(lease)
            release(lease, broken=broken)

        mp.setattr(pool, "acquire", acquire_spy)
        mp.setattr(pool, "release", release_spy)

    def twice(self) -> list[int]:
        return [n for n in Counter(map(id, self.released)).values() if n > 1]

    def unreleased(self) -> int:
        released = {id(lease) for lease in self.released}
        return sum(id(lease) not in released for lease in self.acquired)


async def gone_early(p: Running, path: str) -> None:
    """A client that gives up after 0.3 s."""
    with pytest.raises(asyncio.TimeoutError):
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with p.session.get(p.url + path, timeout=timeout) as r:
            await r.read()


async def dies_mid_response(p: Running) -> None:
    async with p.session.get(p.url + "/bytes?n=200000000") as r:
        assert r.status == 200
        await r.content.read(1024)
        os.kill(int(r.headers["X-Pid"]), signal.SIGKILL)
        with pytest.raises(aiohttp.ClientPayloadError):
            async for _ in r.content.iter_any():
                pass


async def test_every_exit_path_releases_its_slot_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_proxy(pool={"max_concurrency": 2, "max_instances": 2}) as p:
        leases = Leases(p, monkeypatch)
        retries = p.proxy.metrics.retries._value.get()

        async def ok() -> None:
            async with p.session.get(p.url + "/") as r:
                assert r.status == 200

        await ok()
        # a burst beyond the two instances' four slots, with errors: clients that leave
        # while held or mid-request, instances that die before answering
        async with p.session.get(p.url + "/crash") as r:
            assert r.status == 502
        assert p.proxy.metrics.retries._value.get() > retries  # died silently: retried
        await asyncio.gather(
            *(gone_early(p, "/io?ms=1500") for _ in range(6)),
            *(ok() for _ in range(4)),
        )
        await dies_mid_response(p)
        async with p.session.ws_connect(p.url + "/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
        await ok()

        async def settled() -> bool:
            insts = await p.instances()
            return leases.unreleased() == 0 and all(i["in_flight"] == 0 for i in insts)

        await eventually(settled, 15, "every slot back")
        assert leases.twice() == []
        assert len(leases.acquired) >= 15  # every path above took a slot
