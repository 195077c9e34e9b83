"""Warm-up requests: the template sends backend.warmup_requests through the app in
process before it forks, so a fresh fork's first request finds Django's URL resolver,
compiled templates and middleware chain already built. Measured through the proxy on a
startproject site: a fresh fork's first GET /admin/login/ with and without warm-up."""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
from pathlib import Path
from typing import Any

import pytest

from forkproxy.backends.process.child import warmup
from tests.backends.process.test_process_django import django_project  # noqa: F401 - fixture
from tests.conftest import Running, run_proxy

FORKS = 13  # each request is a fresh fork's first (max_requests_per_instance = 1)


def _upstream_ms(server_timing: str) -> float:
    m = re.search(r"upstream;dur=([\d.]+)", server_timing)
    assert m, server_timing
    return float(m.group(1))


def _django(project: Path, warm: list[str]) -> dict[str, Any]:
    return {
        "type": "process",
        "app": "mysite.wsgi:application",
        "cwd": str(project),
        "env": {"DJANGO_SETTINGS_MODULE": "mysite.settings"},  # startproject's: admin at /admin/
        "warmup_requests": warm,
        "prefork": 1,  # the fork's loop is up before the request: what is left is the app's
    }


async def _first_request(p: Running) -> float:
    # the last fork's exit and the next spare's setup done: the request is all that
    # runs (the box is shared; our own teardown must not be what we measure)
    await asyncio.sleep(0.3)
    async with p.session.get(p.url + "/admin/login/") as r:
        body = await r.text()
        assert r.status == 200 and "csrfmiddlewaretoken" in body, body[:300]
        return _upstream_ms(r.headers["Server-Timing"])


@pytest.mark.timeout(120)
async def test_a_fresh_forks_first_django_request_is_warm(
    django_project: Path,  # noqa: F811 - the imported fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    pool = {"max_requests_per_instance": 1, "start_retries": 2}
    cold: list[float] = []
    warm: list[float] = []
    async with (
        run_proxy(backend=_django(django_project, []), pool=pool) as without,
        run_proxy(backend=_django(django_project, ["/admin/login/"]), pool=pool) as with_warmup,
    ):
        for n in range(FORKS):  # interleaved: both see the same load on a shared box
            c, w = await _first_request(without), await _first_request(with_warmup)
            if n:  # the first forks raced their template's own start
                cold.append(c)
                warm.append(w)
    cold_p50, warm_p50 = statistics.median(cold), statistics.median(warm)
    with capsys.disabled():
        print(f"\nfirst GET /admin/login/ of a fresh fork, upstream ms: cold {cold}, warm {warm}")
        print(f"p50 cold {cold_p50:.1f} ms, warm {warm_p50:.1f} ms")
    assert warm_p50 < 0.6 * cold_p50, (cold, warm)


def test_wsgi_asgi_and_aiohttp_apps_are_driven_in_process() -> None:
    from aiohttp import web

    from examples.flask_app import app as flask_app
    from tests.backends.process.fastapi_app import app as fastapi_app

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hi")

    aio = web.Application()
    aio.router.add_get("/", hello)
    results: dict[str, Any] = {
        "wsgi": warmup.run("wsgi", flask_app, ["/healthz", "http://site.test/nope?x=1"]),
        "asgi": warmup.run("asgi", fastapi_app, ["/", "/nope"]),  # "/" is a sync view
        "aiohttp": warmup.run("aiohttp", aio, ["/", "/nope"]),
    }
    statuses = {k: [line.split(": ")[1].split(" ")[0] for line in v] for k, v in results.items()}
    assert statuses == {"wsgi": ["200", "404"], "asgi": ["200", "404"], "aiohttp": ["200", "404"]}
    # the ASGI app's sync view ran on a worker thread: gone before the template forks
    assert threading.active_count() == 1


def test_a_failing_warm_up_is_reported_not_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    def broken(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("database not configured")

    (line,) = warmup.run("wsgi", broken, ["/"])
    assert "failed (RuntimeError: database not configured)" in line
    assert "warm-up GET /: failed" in capsys.readouterr().err
    # aiohttp apps are warmed only when the user names paths: their default runs no app code
    assert warmup.run_spec("aiohttp", object(), {"paths": ["/"], "configured": False}) == []
