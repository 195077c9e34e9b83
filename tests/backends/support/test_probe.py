"""The one readiness probe (forkproxy.backends.support.probe) against a real HTTP server whose
answers the test scripts: the < 500 rule, the rule as a parameter, stop, check, deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from forkproxy.backends.support.probe import NotReady, wait_ready
from tests.conftest import free_port


class Scripted:
    """Answers GET /ready with the next status of `statuses` (the last one repeats)."""

    def __init__(self) -> None:
        self.statuses: list[int] = [200]
        self.seen = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        status = self.statuses[min(self.seen, len(self.statuses) - 1)]
        self.seen += 1
        headers = {"Location": "/elsewhere"} if 300 <= status < 400 else None
        return web.Response(status=status, headers=headers)


@pytest.fixture
async def app() -> AsyncIterator[Scripted]:
    scripted = Scripted()
    web_app = web.Application()
    web_app.router.add_get("/ready", scripted.handle)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    scripted.url = f"http://127.0.0.1:{port}/ready"
    yield scripted
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        yield s


async def test_any_status_below_500_is_ready(app: Scripted, session: aiohttp.ClientSession) -> None:
    app.statuses = [503, 500, 404]
    assert await wait_ready(session, app.url, deadline=time.monotonic() + 5)
    assert app.seen == 3


async def test_a_redirect_is_an_answer_not_followed(
    app: Scripted, session: aiohttp.ClientSession
) -> None:
    app.statuses = [302]
    assert await wait_ready(session, app.url, deadline=time.monotonic() + 5)
    assert app.seen == 1  # /elsewhere (a 404 route) was never asked


async def test_the_rule_is_a_parameter(app: Scripted, session: aiohttp.ClientSession) -> None:
    app.statuses = [404]
    with pytest.raises(NotReady) as err:
        await wait_ready(session, app.url, ready_below=300, deadline=time.monotonic() + 0.3)
    assert err.value.last == "HTTP 404"
    assert app.url in str(err.value)


async def test_no_server_times_out_with_the_last_error(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}/ready"  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(NotReady) as err:
        await wait_ready(session, url, deadline=t0 + 0.3)
    assert 0.3 <= time.monotonic() - t0 < 2.0
    assert "Connect" in err.value.last


async def test_stop_ends_the_wait_at_once(app: Scripted, session: aiohttp.ClientSession) -> None:
    app.statuses = [503]
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    t0 = time.monotonic()
    assert not await wait_ready(session, app.url, stop=stop, max_delay=5.0)
    assert time.monotonic() - t0 < 1.0  # woken by the event, not after the next delay


async def test_check_may_give_up(app: Scripted, session: aiohttp.ClientSession) -> None:
    app.statuses = [503]

    async def gone() -> None:
        if app.seen >= 2:
            raise RuntimeError("the instance exited")

    with pytest.raises(RuntimeError, match="exited"):
        await wait_ready(session, app.url, check=gone, deadline=time.monotonic() + 5)
    assert app.seen == 2
