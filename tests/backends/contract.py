"""The contract every backend passes, run against the real engine (processes, Docker,
vcsim). Subclass `BackendContract` as `TestXxxContract` in your backend's test folder.

How to bind it (see tests/backends/process/test_process_contract.py for a full example):

    class TestMyContract(BackendContract):
        @pytest.fixture
        def ctx(self) -> BackendContext:
            return recording_context(f"test-my-{uuid.uuid4().hex[:8]}")  # unique pool

        @pytest.fixture
        async def backend(self, ctx):                 # already prepared
            b = create_backend(parse_config(...), ctx)
            await b.prepare()
            yield b
            await b.aclose()                           # aclose() twice must be fine

        async def kill_out_of_band(self, backend, instance):
            ...                                        # e.g. os.kill(pid, SIGKILL)

Optional overrides: `readiness_path`, `ready_within` / `death_within` (seconds),
`leftovers(backend, ctx)` (what list() shows after aclose; default: backend.list()).
`recording_context` wires ctx.on_death to a `DeathLog` the tests can await.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import aiohttp
import pytest

from forkproxy.backends.base import Backend, BackendContext, Instance


class DeathLog:
    """An on_death callback that remembers what it was told and can be awaited."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, instance_id: str, reason: str) -> None:
        self.events.append((instance_id, reason))
        self._changed.set()

    def reasons(self, instance_id: str) -> list[str]:
        return [r for i, r in self.events if i == instance_id]

    async def wait_for(self, instance_id: str, within: float) -> str:
        """The first death reason reported for `instance_id`; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while not self.reasons(instance_id):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no on_death for {instance_id} within {within}s: {self.events}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return self.reasons(instance_id)[0]


def recording_context(pool_name: str, **kwargs: Any) -> BackendContext:
    """A BackendContext whose on_death is a DeathLog (reach it as `ctx.on_death`)."""
    return BackendContext(
        pool_name=pool_name,
        owner_id=f"owner-{uuid.uuid4().hex[:8]}",
        on_death=DeathLog(),
        **kwargs,
    )


def deaths(ctx: BackendContext) -> DeathLog:
    log = ctx.on_death
    assert isinstance(log, DeathLog), "build ctx with recording_context()"
    return log


def new_id() -> str:
    return f"ct-{uuid.uuid4().hex[:10]}"


async def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body). Raises aiohttp/OS errors."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(timeout=client_timeout, connector=connector) as session,
        session.get(url) as resp,
    ):
        return resp.status, await resp.read()


async def serves(url: str, timeout: float = 2.0) -> bool:
    try:
        status, _ = await get(url, timeout)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
    return status == 200


class BackendContract:
    """Backend-agnostic tests; subclasses provide `ctx`, `backend` and kill_out_of_band."""

    readiness_path = "/"
    ready_within = 30.0  # seconds for a started instance to answer 200
    death_within = 10.0  # seconds for an out-of-band kill to reach on_death
    gone_within = 10.0  # seconds for a stopped instance to stop answering

    async def kill_out_of_band(self, backend: Backend, instance: Instance) -> None:
        raise NotImplementedError("subclasses kill the instance behind the backend's back")

    async def leftovers(self, backend: Backend, ctx: BackendContext) -> list[Instance]:
        return await backend.list()

    # -- helpers -------------------------------------------------------------------

    def url(self, instance: Instance) -> str:
        return instance.endpoint.url + self.readiness_path

    async def wait_ready(self, instance: Instance) -> bytes:
        """Like the pool: a ready instance must answer at once, others within the deadline."""
        if instance.ready:
            status, body = await get(self.url(instance), timeout=self.ready_within)
            assert status == 200, f"instance claimed ready but answered {status}"
            return body
        deadline = time.monotonic() + self.ready_within
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                status, body = await get(self.url(instance), timeout=2.0)
                if status == 200:
                    return body
                last = AssertionError(f"status {status}")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
            await asyncio.sleep(0.05)
        pytest.fail(f"{instance.id} not ready within {self.ready_within}s: {last!r}")

    async def wait_not_serving(self, instance: Instance) -> None:
        deadline = time.monotonic() + self.gone_within
        while await serves(self.url(instance), timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{instance.id} still serves {self.gone_within}s after stop()")
            await asyncio.sleep(0.1)

    # -- the contract --------------------------------------------------------------

    async def test_start_gives_a_serving_endpoint(self, backend: Backend) -> None:
        iid = new_id()
        inst = await backend.start(iid)
        assert inst.id == iid
        assert inst.endpoint.port > 0
        await self.wait_ready(inst)

    async def test_two_starts_are_two_working_instances(self, backend: Backend) -> None:
        a, b = await asyncio.gather(backend.start(new_id()), backend.start(new_id()))
        assert a.id != b.id
        assert a.endpoint != b.endpoint
        await asyncio.gather(self.wait_ready(a), self.wait_ready(b))

    async def test_list_shows_started_instances_with_owner(
        self, backend: Backend, ctx: BackendContext
    ) -> None:
        started = [await backend.start(new_id()) for _ in range(2)]
        listed = {i.id: i for i in await backend.list()}
        for inst in started:
            assert inst.id in listed, f"{inst.id} missing from list(): {sorted(listed)}"
            assert listed[inst.id].owner_id == ctx.owner_id

    async def test_stop_removes_the_instance(self, backend: Backend, ctx: BackendContext) -> None:
        inst = await backend.start(new_id())
        await self.wait_ready(inst)
        await backend.stop(inst, "test")
        await self.wait_not_serving(inst)
        assert inst.id not in {i.id for i in await backend.list()}
        await backend.stop(inst, "test")  # idempotent
        assert deaths(ctx).reasons(inst.id) == [], "a requested stop is not a death"

    async def test_out_of_band_death_reaches_on_death(
        self, backend: Backend, ctx: BackendContext
    ) -> None:
        inst = await backend.start(new_id())
        await self.wait_ready(inst)
        await self.kill_out_of_band(backend, inst)
        reason = await deaths(ctx).wait_for(inst.id, self.death_within)
        assert reason
        await backend.stop(inst, "test")  # stopping a dead instance is not an error

    async def test_a_heartbeat_renews_this_runs_lease(
        self, backend: Backend, ctx: BackendContext
    ) -> None:
        """Replicas judge each other by leases: this run's token changes on every beat
        (or the backend keeps none and says so with None)."""
        await backend.start(new_id())  # prepared, like the pool's first sweep
        await backend.heartbeat()
        before = await backend.leases()
        await backend.heartbeat()
        after = await backend.leases()
        if before is None:
            assert after is None
            return
        assert after is not None and ctx.owner_id in before and ctx.owner_id in after
        assert before[ctx.owner_id] != after[ctx.owner_id]

    async def test_aclose_leaves_nothing(self, backend: Backend, ctx: BackendContext) -> None:
        started = [await backend.start(new_id()) for _ in range(2)]
        await asyncio.gather(*(self.wait_ready(i) for i in started))
        await backend.aclose()
        assert await self.leftovers(backend, ctx) == []
        for inst in started:
            assert not await serves(self.url(inst), timeout=1.0)
