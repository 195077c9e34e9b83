"""What makes a fork's cold start short, and the guarantees it must keep: the template
primes aiohttp before forking without starting threads, a connection queued before the
fork serves is answered, a fork that dies before serving fails the request with a counted
502/503 (never a hang), and an idle fork exits at once while hooks and in-flight requests
still get a graceful stop."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from forkproxy.backends.process._procfs import is_running
from tests.backends.contract import get
from tests.backends.process.helpers import MakeBackend
from tests.conftest import run_proxy


async def test_the_primed_template_has_one_thread(make_backend: MakeBackend) -> None:
    """Priming runs an event loop in the template; it must leave no native thread behind
    (libuv's resolver pool would be one), since fork copies only the forking thread."""
    backend = make_backend(prefork=0)
    await backend.prepare()
    template = next(i for i in await backend.list() if i.meta["kind"] == "template")
    assert os.listdir(f"/proc/{template.handle}/task") == [str(template.handle)]


async def test_a_connection_queued_before_the_fork_serves_is_answered(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(prefork=0, post_fork="tests.backends.process.apps:slow_post_fork")
    await backend.prepare()
    t0 = time.monotonic()
    inst = await backend.start("queued")
    reader, writer = await asyncio.open_connection(inst.endpoint.host, inst.endpoint.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    connected_after = time.monotonic() - t0
    response = await asyncio.wait_for(reader.read(), 10.0)
    writer.close()
    assert connected_after < 0.25  # sent while the fork was still in post_fork
    assert response.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - t0 >= 0.3  # ...and answered once it served


async def test_a_fork_that_dies_before_serving_fails_the_request_with_a_count() -> None:
    backend = {"post_fork": "tests.backends.process.apps:failing_post_fork", "prefork": 0}
    pool = {"max_requests_per_instance": 1, "start_retries": 2}
    async with run_proxy(backend=backend, pool=pool) as p:
        t0 = time.monotonic()
        async with p.session.get(p.url + "/") as r:
            status = r.status
        elapsed = time.monotonic() - t0
        async with p.session.get(p.admin + "/metrics") as r:
            metrics = await r.text()
    assert status in (502, 503)
    assert elapsed < 10.0
    counted = re.findall(
        r"^forkproxy_(?:upstream_errors|rejected)_total\{[^}]*\} (\S+)$", metrics, re.M
    )
    assert sum(float(v) for v in counted) >= 1, metrics


async def test_an_in_flight_request_finishes_when_its_fork_is_stopped(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(prefork=0)
    await backend.prepare()
    inst = await backend.start("busy")

    async def stop_soon() -> None:
        await asyncio.sleep(0.2)  # the request is in the handler
        await backend.stop(inst, "test")

    slow, _ = await asyncio.gather(
        get(inst.endpoint.url + "/slow?ms=600", timeout=5.0), stop_soon()
    )
    assert slow == (200, b"io 600ms\n")


@pytest.mark.parametrize(
    ("app", "records"),
    [
        ("cleanup_app", ["shutdown", "cleanup"]),  # its on_shutdown and on_cleanup hooks
        ("background_task_app", ["worker cancelled"]),  # a task it started in on_startup
    ],
)
async def test_an_apps_own_teardown_runs_on_stop(
    make_backend: MakeBackend, tmp_path: Path, app: str, records: list[str]
) -> None:
    """Such a fork takes the graceful stop, not the immediate exit of an idle one."""
    log = tmp_path / "hooks"
    backend = make_backend(
        prefork=0,
        app=f"tests.backends.process.apps:{app}",
        env={"FORKPROXY_TEST_HOOK_LOG": str(log)},
    )
    await backend.prepare()
    inst = await backend.start("hooked")
    assert (await get(inst.endpoint.url + "/"))[0] == 200
    await backend.stop(inst, "test")
    assert log.read_text() == "".join(f"{inst.meta['pid']} {r}\n" for r in records)


async def test_an_idle_fork_exits_on_stop_at_once(make_backend: MakeBackend) -> None:
    backend = make_backend(prefork=0, stop_grace="10s")
    await backend.prepare()
    inst = await backend.start("idle")
    assert (await get(inst.endpoint.url + "/"))[0] == 200
    t0 = time.monotonic()
    await backend.stop(inst, "test")
    assert time.monotonic() - t0 < 2.0
    assert not is_running(int(inst.meta["pid"]))
