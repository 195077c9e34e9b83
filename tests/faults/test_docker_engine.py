"""Fault: the Docker engine is killed under load, then restarted. Clients get a prompt 503
saying the backend is down (not a wait for starts that cannot succeed), the first 200
after the engine answers again comes within seconds, and the proxy leaves nothing behind.
Runs against an engine of its own (docker_engine.py), never the machine's main one."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest

from forkproxy.proxy.config import parse
from forkproxy.proxy.server import Proxy
from tests.conftest import proxy_config
from tests.faults.docker_engine import IMAGE, FaultEngine, problem

# The docker SDK leaks the socket of each connect to a dead engine (its unixconn): they
# are collected in this test, where their ResourceWarning is ignored, not at exit.
pytestmark = [pytest.mark.docker, pytest.mark.filterwarnings("ignore::ResourceWarning")]

DOWN_ANSWER = 1.0  # seconds: a client's 503 once the engine is known down
BACK_WITHIN = 6.0  # seconds from the engine answering again to the first 200


@pytest.fixture(scope="module")
def engine() -> Iterator[FaultEngine]:
    why = problem()
    if why is not None:
        if os.environ.get("FORKPROXY_REQUIRE_DOCKER") == "1":
            pytest.fail(f"engine-killed fault test: {why}", pytrace=False)
        pytest.skip(f"engine-killed fault test: {why}")
    eng = FaultEngine()
    try:
        eng.start()
        eng.load_image()
        yield eng
    finally:
        eng.stop()


@dataclass
class Answer:
    at: float  # when the request was sent (monotonic)
    took: float
    status: int
    text: str


@asynccontextmanager
async def docker_proxy(engine: FaultEngine, **backend: object) -> AsyncIterator[Proxy]:
    cfg = proxy_config(pool={"start_timeout": "20s", "hold_timeout": "10s"})
    cfg["backend"] = {
        "type": "docker",
        "image": IMAGE,
        "engines": [engine.url],
        "stop_timeout": "1s",
        "memory": 0,
        "cpus": 0,
        **backend,
    }
    proxy = Proxy(parse(cfg))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def client(url: str, answers: list[Answer], stop: asyncio.Event) -> None:
    """One client in a loop, a request at a time, as a health checker or a user would."""
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                async with s.get(url + "/") as r:
                    text = await r.text()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, text = 0, repr(exc)
            answers.append(Answer(t0, time.monotonic() - t0, status, text))
            await asyncio.sleep(0.05)


async def until(answers: list[Answer], after: float, want: int, within: float) -> Answer:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = next((a for a in answers if a.at >= after and a.status == want), None)
        if found is not None:
            return found
        await asyncio.sleep(0.02)
    seen = [(round(a.at - after, 2), a.status, a.text[:60]) for a in answers if a.at >= after]
    raise AssertionError(f"no {want} within {within}s; seen: {seen[-20:]}")


async def test_a_failed_container_start_is_logged_once(
    engine: FaultEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        docker_proxy(engine, command=["/bin/no-such-program"]) as proxy,
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{proxy.listen_port}/") as r,
    ):
        assert r.status == 503
        failed = [f["instance"] for f in proxy.pool.recent_failures]
    assert failed
    for iid in failed:
        about = [r for r in caplog.records if iid in r.getMessage() and "no-such" in r.getMessage()]
        assert [r.levelname for r in about] == ["WARNING"], [r.getMessage() for r in about]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_engine_killed_then_restarted(engine: FaultEngine) -> None:
    answers: list[Answer] = []
    stop = asyncio.Event()
    async with docker_proxy(engine) as proxy:
        pool = f"io.forkproxy.pool={proxy.cfg.server.name}"
        url = f"http://127.0.0.1:{proxy.listen_port}"
        async with asyncio.TaskGroup() as tg:
            tg.create_task(client(url, answers, stop))
            tg.create_task(client(url, answers, stop))
            try:
                await until(answers, 0.0, 200, 60)
                killed = time.monotonic()
                await asyncio.to_thread(engine.kill)
                down = await until(answers, killed, 503, 15)
                await asyncio.sleep(3.0)  # the engine stays down: every answer is prompt
                restarted = time.monotonic()
                up_after = await asyncio.to_thread(engine.start)
                back = time.monotonic()
                first = await until(answers, restarted, 200, 60)
            finally:
                stop.set()
        outage = [a for a in answers if down.at <= a.at and a.at + a.took <= restarted]
        first_200 = first.at + first.took
        print(
            f"\nengine killed: first 503 {down.at + down.took - killed:.2f}s after the kill; "
            f"{len(outage)} answers while down, slowest {max(a.took for a in outage):.3f}s; "
            f"engine restarted in {up_after:.1f}s, first 200 {first_200 - back:.2f}s after "
            f"it answered ({first_200 - restarted:.2f}s after the restart)"
        )
        assert len(outage) >= 3
        slow = [(round(a.took, 2), a.status, a.text) for a in outage if a.took >= DOWN_ANSWER]
        assert not slow, f"answers while the engine was down took too long: {slow}"
        assert all(a.status == 503 and "backend down" in a.text for a in outage), [
            (a.status, a.text) for a in outage if a.status != 503 or "backend down" not in a.text
        ]
        assert first_200 - back < BACK_WITHIN
        text = await metrics(proxy)
        assert 'forkproxy_rejected_total{reason="backend_down"}' in text
    gc.collect()
    left = engine.labelled(pool)
    assert left == [], f"containers left behind on the engine: {left}"


async def metrics(proxy: Proxy) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as r,
    ):
        return await r.text()
