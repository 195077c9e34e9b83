"""Fork mode with real WSGI apps (Flask, a bare callable) served by waitress: kind
detection, threads per instance, graceful stop, PRNG state per fork, post_fork."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.process.child import apps
from tests.backends.contract import get
from tests.backends.process.helpers import MakeBackend


async def fetch(url: str, **kw: Any) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(kw.pop("method", "GET"), url, **kw) as resp,
    ):
        return resp.status, await resp.read()


def test_detect_tells_wsgi_from_asgi() -> None:
    import django.core.handlers.asgi
    import django.core.handlers.wsgi
    from django.conf import settings

    from tests.backends.process import wsgi_apps

    if not settings.configured:
        settings.configure()
    assert apps.detect(wsgi_apps.flask_app) == "wsgi"
    assert apps.detect(wsgi_apps.plain_wsgi) == "wsgi"
    assert apps.detect(django.core.handlers.wsgi.WSGIHandler()) == "wsgi"
    assert apps.detect(django.core.handlers.asgi.ASGIHandler()) == "asgi"
    assert apps.detect(wsgi_apps.asgi_instance) == "asgi"

    async def asgi_func(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert apps.detect(asgi_func) == "asgi"
    assert apps.detect(wsgi_apps.one_arg) is None


@pytest.mark.parametrize("target", ["examples.flask_app:app", "examples.flask_app:create_app"])
async def test_flask_app_or_factory_is_served_as_wsgi(
    make_backend: MakeBackend, target: str
) -> None:
    backend = make_backend(app=target)
    await backend.prepare()
    assert backend.concurrency_hint() == 4  # threads' default
    inst = await backend.start("flask-1")
    status, body = await get(inst.endpoint.url + "/")
    assert (status, body) == (200, b"hello from flask instance flask-1\n")
    payload = bytes(range(256)) * 4096  # 1 MiB, binary
    status, echoed = await fetch(inst.endpoint.url + "/echo", method="POST", data=payload)
    assert status == 200 and echoed == payload


async def test_bare_wsgi_callable_sees_forwarded_headers(make_backend: MakeBackend) -> None:
    # waitress would drop X-Forwarded-For from an "untrusted" peer; forkproxy already
    # decided which ones pass, so the app must see them.
    backend = make_backend(app="tests.backends.process.wsgi_apps:plain_wsgi")
    await backend.prepare()
    inst = await backend.start("bare-1")
    status, body = await fetch(
        inst.endpoint.url + "/some/path", headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert status == 200
    assert json.loads(body) == {"path": "/some/path", "xff": "203.0.113.7"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"app": "examples.flask_app:app", "app_kind": "asgi"},
            'is WSGI by its type or signature, but app_kind = "asgi"',
        ),
        (
            {"app": "examples.asgi_app:app", "app_kind": "wsgi"},
            'is ASGI by its type or signature, but app_kind = "wsgi"',
        ),
        ({"app": "tests.backends.process.wsgi_apps:one_arg"}, 'set backend.app_kind = "asgi" or'),
        (
            {"app": "examples.flask_app:app", "post_fork": "examples.flask_app:nope"},
            "has no attribute 'nope'",
        ),
    ],
)
async def test_a_wrong_kind_fails_prepare_instead_of_answering_500(
    make_backend: MakeBackend, keys: dict[str, str], message: str
) -> None:
    backend = make_backend(**keys)
    with pytest.raises(BackendConfigError) as info:
        await backend.prepare()
    assert message in str(info.value)


async def test_threads_serve_requests_at_once(make_backend: MakeBackend) -> None:
    backend = make_backend(app="examples.flask_app:app", threads=4)
    await backend.prepare()
    assert backend.concurrency_hint() == 4
    inst = await backend.start("threads-1")
    t0 = time.perf_counter()
    results = await asyncio.gather(*(fetch(inst.endpoint.url + "/delay?ms=600") for _ in range(4)))
    elapsed = time.perf_counter() - t0
    assert [s for s, _ in results] == [200] * 4
    assert elapsed < 1.8, f"4 x 600 ms on 4 threads took {elapsed:.2f}s (serial: 2.4 s)"


async def test_sigterm_lets_an_in_flight_request_finish(make_backend: MakeBackend) -> None:
    backend = make_backend(app="examples.flask_app:app", stop_grace="5s")
    await backend.prepare()
    inst = await backend.start("graceful-1")
    slow = asyncio.ensure_future(fetch(inst.endpoint.url + "/delay?ms=800"))  # noqa: TID251
    await asyncio.sleep(0.2)  # the request is in the app
    t0 = time.perf_counter()
    await backend.stop(inst, "idle")
    stopped_after = time.perf_counter() - t0
    assert await slow == (200, b"slept 800ms in graceful-1\n")
    assert stopped_after < 4.0  # exited once drained, not at the SIGKILL deadline
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(inst.endpoint.url + "/")


@pytest.mark.parametrize("prefork", [0, 1])
async def test_forks_do_not_share_prng_state(
    make_backend: MakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefork: int
) -> None:
    log = tmp_path / "post_fork.log"
    monkeypatch.setenv("WSGI_TEST_POST_FORK_LOG", str(log))
    backend = make_backend(
        app="tests.backends.process.wsgi_apps:flask_app",
        post_fork="tests.backends.process.wsgi_apps:reseed",
        prefork=prefork,
    )
    await backend.prepare()
    draws = []
    for n in range(2):
        inst = await backend.start(f"rng-{n}")
        status, body = await fetch(inst.endpoint.url + "/rand")
        assert status == 200
        draws.append(json.loads(body))
    a, b = draws
    assert a["pid"] != b["pid"]
    assert a["module_random"] != b["module_random"]  # `random` itself: reseeded at fork
    assert a["own_random"] != b["own_random"]  # the app's own Random(): by its post_fork
    # post_fork ran in each serving fork (with the app), never in the template
    assert [d["reinit_in"] for d in draws] == [d["pid"] for d in draws]
    ran_in = [line.split() for line in log.read_text().splitlines()]
    assert {int(pid) for pid, _ in ran_in} >= {a["pid"], b["pid"]}
    assert {name for _, name in ran_in} == {"wsgi_apps"}


async def test_without_post_fork_an_app_owned_prng_is_shared(make_backend: MakeBackend) -> None:
    # Why the hook exists: state seeded in the template is the same in every fork.
    backend = make_backend(app="tests.backends.process.wsgi_apps:flask_app")
    await backend.prepare()
    draws = []
    for n in range(2):
        inst = await backend.start(f"shared-{n}")
        draws.append(json.loads((await fetch(inst.endpoint.url + "/rand"))[1]))
    assert draws[0]["pid"] != draws[1]["pid"]
    assert draws[0]["own_random"] == draws[1]["own_random"]
    assert draws[0]["module_random"] != draws[1]["module_random"]


async def test_a_failing_post_fork_fails_the_start(make_backend: MakeBackend) -> None:
    from forkproxy.backends.errors import StartError
    from tests.backends.contract import deaths

    backend = make_backend(
        app="examples.flask_app:app",
        post_fork="tests.backends.process.wsgi_apps:post_fork_that_fails",
    )
    await backend.prepare()
    try:
        inst = await backend.start("pf-1")
    except StartError:
        return  # it died before start() returned
    # or it died right after: reported, and nothing answers
    del inst
    ctx = backend.ctx  # type: ignore[attr-defined]
    assert "exited:1" in await deaths(ctx).wait_for("pf-1", 10.0)
