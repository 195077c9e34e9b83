"""forkproxy end to end with the docker backend: a real `forkproxy run` subprocess in
front of real containers. Cold start, paused pool, idle reaping, deaths, crash recovery."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from forkproxy.backends.base import LABEL_OWNER
from forkproxy.loadtest.run.configs import dumps, merge
from tests.backends.docker.conftest import ENGINE, IMAGE, pool_containers
from tests.conftest import ROOT, ProxyProcess, eventually, get, instances, proxies_checked

pytestmark = pytest.mark.docker

MakeProxy = Callable[..., ProxyProcess]


def config_text(pool_name: str, **tables: dict[str, Any]) -> str:
    base = {
        "server": {"name": pool_name, "shutdown_timeout": "10s"},
        "pool": {"idle_ttl": "60s", "start_timeout": "15s", "tick": "50ms"},
        "backend": {"type": "docker", "image": IMAGE, "engines": [ENGINE], "paused_pool": 0},
    }
    return dumps(merge(base, tables))


@pytest.fixture
async def docker_proxy(
    proxy_process: Callable[[str], ProxyProcess],
    docker_client: docker.DockerClient,
    pool_name: str,
) -> AsyncIterator[MakeProxy]:
    """docker_proxy(**tables) -> a started-later ProxyProcess on this test's pool. At
    teardown every proxy gets SIGTERM and the pool must be empty afterwards."""

    def leftovers() -> list[str]:
        left = pool_containers(docker_client, pool_name, markers=True)
        for c in left:  # clean up even when the proxy failed, so nothing leaks past the test
            c.remove(force=True)
        return [c.name for c in left]

    config = functools.partial(config_text, pool_name)
    async with proxies_checked(proxy_process, config, 20, leftovers) as make:
        yield make


async def test_cold_start_from_nothing(docker_proxy: MakeProxy, pool_name: str) -> None:
    p = docker_proxy()
    await p.start()
    assert await instances(p) == []
    status, body = await get(p.url + "/cgi-bin/env")
    assert status == 200
    assert f"FORKPROXY_POOL={pool_name}" in body
    (inst,) = await instances(p)
    assert inst["backend"] == "docker"
    assert inst["meta"]["from"] == "create"


async def test_close_delimited_response_is_forwarded_whole(
    docker_proxy: MakeProxy, docker_client: docker.DockerClient, pool_name: str
) -> None:
    # busybox httpd sends CGI output with neither Content-Length nor chunking: the body
    # ends when the connection closes (RFC 9112 6.3), which is not an upstream failure.
    p = docker_proxy()
    await p.start()
    assert (await get(p.url + "/"))[0] == 200
    (inst,) = await instances(p)
    async with aiohttp.ClientSession() as s, s.get(inst["endpoint"] + "/cgi-bin/env") as r:
        assert r.content_length is None and "Transfer-Encoding" not in r.headers
        direct = await r.text()
    status, body = await get(p.url + "/cgi-bin/env")
    assert (status, body) == (200, direct)


async def test_served_from_the_paused_pool(
    docker_proxy: MakeProxy, docker_client: docker.DockerClient, pool_name: str
) -> None:
    p = docker_proxy(backend={"paused_pool": 1})
    await p.start()
    assert [c.status for c in pool_containers(docker_client, pool_name)] == ["paused"]
    status, _ = await get(p.url + "/")
    assert status == 200
    (inst,) = await instances(p)
    assert inst["meta"]["from"] == "paused_pool"


async def test_idle_reaping_removes_the_container(
    docker_proxy: MakeProxy, docker_client: docker.DockerClient, pool_name: str
) -> None:
    p = docker_proxy(pool={"idle_ttl": "1s"})
    await p.start()
    assert (await get(p.url + "/"))[0] == 200
    assert len(pool_containers(docker_client, pool_name)) == 1
    await eventually(
        lambda: pool_containers(docker_client, pool_name) == [], 15, "idle container removed"
    )
    assert await instances(p) == []


async def test_an_idle_instance_goes_back_to_the_paused_pool(
    docker_proxy: MakeProxy, docker_client: docker.DockerClient, pool_name: str
) -> None:
    """idle_ttl ends the instance: its container is paused and parked again (the pool
    holds the same two containers it was primed with), and it serves the next request."""
    p = docker_proxy(pool={"idle_ttl": "1s"}, backend={"paused_pool": 2})
    await p.start()
    primed = {c.id for c in pool_containers(docker_client, pool_name)}
    assert len(primed) == 2
    assert (await get(p.url + "/"))[0] == 200
    (first,) = await instances(p)

    async def parked_again() -> bool:
        return await instances(p) == [] and {
            c.id: c.status for c in pool_containers(docker_client, pool_name)
        } == dict.fromkeys(primed, "paused")

    await eventually(parked_again, 15, "the idle instance paused back into the pool")
    assert (await get(p.url + "/"))[0] == 200
    (again,) = await instances(p)
    assert again["meta"]["from"] == "paused_pool"
    assert again["meta"]["container"] == first["meta"]["container"]  # recycled goes first


async def test_container_killed_mid_request_gives_502_then_recovers(
    docker_proxy: MakeProxy, docker_client: docker.DockerClient, pool_name: str
) -> None:
    p = docker_proxy()
    await p.start()
    assert (await get(p.url + "/"))[0] == 200  # an instance is up
    async with asyncio.TaskGroup() as tg:
        # POST: the proxy may not replay it on another instance (a GET it may retry).
        slow = tg.create_task(get(p.url + "/cgi-bin/slow?ms=8000", method="POST"))

        async def in_flight() -> bool:
            return any(i["in_flight"] for i in await instances(p))

        await eventually(in_flight, 10, "the slow request to reach the instance")
        (c,) = pool_containers(docker_client, pool_name)
        c.kill()
    assert slow.result()[0] == 502
    status, body = await get(p.url + "/")  # a fresh container takes over
    assert status == 200 and "forkproxy-test/httpd" in body
    (new,) = pool_containers(docker_client, pool_name)
    assert new.id != c.id


async def test_proxy_sigkill_then_restart_reaps_leftovers(
    docker_proxy: MakeProxy, docker_client: docker.DockerClient, pool_name: str
) -> None:
    first = docker_proxy(backend={"paused_pool": 1})
    await first.start()
    assert (await get(first.url + "/"))[0] == 200
    await eventually(
        lambda: len(pool_containers(docker_client, pool_name)) == 2, 15, "a refilled paused pool"
    )
    old_owner = pool_containers(docker_client, pool_name)[0].labels[LABEL_OWNER]
    first.kill()  # SIGKILL: no cleanup at all
    assert len(pool_containers(docker_client, pool_name)) == 2

    second = docker_proxy(backend={"paused_pool": 1})
    await second.start()
    owners = {c.labels[LABEL_OWNER] for c in pool_containers(docker_client, pool_name)}
    assert old_owner not in owners
    assert (await get(second.url + "/"))[0] == 200


def test_missing_image_exits_at_startup(tmp_path: Path, pool_name: str) -> None:
    cfg = tmp_path / "missing.toml"
    cfg.write_text(config_text(pool_name, backend={"image": "forkproxy-test/absent:9"}))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "forkproxy",
            "run",
            "--config",
            str(cfg),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "forkproxy-test/absent:9" in out
    assert "no pull was attempted" in out
