"""forkproxy end to end with the swarm backend: a real `forkproxy run` subprocess in front of
Swarm services. Serving through swarm-placed tasks, a task killed behind the proxy's back,
and a SIGKILLed proxy's services reaped by the next run."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import docker
import pytest

from forkproxy.backends.base import LABEL_OWNER
from forkproxy.loadtest.run.configs import dumps, merge
from tests.backends.swarm.conftest import ENGINE, IMAGE, kill_task, pool_services, remove_pool
from tests.conftest import ProxyProcess, eventually, instances, proxies_checked
from tests.conftest import get as get_within

pytestmark = pytest.mark.swarm

MakeProxy = Callable[..., ProxyProcess]
get = functools.partial(get_within, timeout=40)  # a service create takes up to seconds


def config_text(pool_name: str, **tables: dict[str, Any]) -> str:
    base = {
        "server": {"name": pool_name, "shutdown_timeout": "10s"},
        "pool": {"idle_ttl": "60s", "start_timeout": "30s", "tick": "50ms"},
        "backend": {"type": "swarm", "image": IMAGE, "manager": ENGINE, "stop_grace": "2s"},
    }
    return dumps(merge(base, tables))


@pytest.fixture
async def swarm_proxy(
    proxy_process: Callable[[str], ProxyProcess], swarm: docker.DockerClient, pool_name: str
) -> AsyncIterator[MakeProxy]:
    """swarm_proxy(**tables) -> a started-later ProxyProcess on this test's pool. At teardown
    every proxy gets SIGTERM and the pool must have no service left."""
    config = functools.partial(config_text, pool_name)
    async with proxies_checked(
        proxy_process, config, 30, lambda: remove_pool(swarm, pool_name)
    ) as make:
        yield make


async def test_serves_through_swarm_tasks_and_survives_a_killed_task(
    swarm_proxy: MakeProxy, swarm: docker.DockerClient, pool_name: str
) -> None:
    p = swarm_proxy()
    await p.start()
    assert await instances(p) == []
    status, body = await get(p.url + "/cgi-bin/env")
    assert status == 200
    assert f"FORKPROXY_POOL={pool_name}" in body
    (inst,) = await instances(p)
    assert inst["backend"] == "swarm"
    (svc,) = pool_services(swarm, pool_name)
    assert svc["Spec"]["Name"] == inst["meta"]["service"]
    # what the swarm was asked to run: one replica, never restarted, limited, host port
    spec = svc["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 1
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert spec["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"] == 256 * 1024**2
    assert spec["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"

    # The task's container is killed on its node, behind the proxy's back: the instance is
    # reported dead from the task state and a new service takes the next request.
    (task,) = swarm.api.tasks(filters={"service": svc["ID"]})
    kill_task(swarm, task["ID"])

    async def replaced() -> bool:
        return [i["id"] for i in await instances(p)] != [inst["id"]]

    await eventually(replaced, 10, "the dead instance to leave the pool")
    status, _ = await get(p.url + "/")
    assert status == 200
    (new,) = await instances(p)
    assert new["id"] != inst["id"]
    names = [s["Spec"]["Name"] for s in pool_services(swarm, pool_name)]
    assert inst["meta"]["service"] not in names, "the dead instance's service was not removed"


async def test_killed_task_mid_request_gives_502_then_recovers(
    swarm_proxy: MakeProxy, swarm: docker.DockerClient, pool_name: str
) -> None:
    p = swarm_proxy()
    await p.start()
    assert (await get(p.url + "/"))[0] == 200
    async with asyncio.TaskGroup() as tg:
        # POST: the proxy may not replay it on another instance.
        slow = tg.create_task(get(p.url + "/cgi-bin/slow?ms=8000", method="POST"))

        async def in_flight() -> bool:
            return any(i["in_flight"] for i in await instances(p))

        await eventually(in_flight, 10, "the slow request to reach the instance")
        (svc,) = pool_services(swarm, pool_name)
        (task,) = swarm.api.tasks(filters={"service": svc["ID"]})
        kill_task(swarm, task["ID"])
    assert slow.result()[0] == 502
    assert (await get(p.url + "/"))[0] == 200


async def test_proxy_sigkill_then_next_run_reaps_its_services(
    swarm_proxy: MakeProxy, swarm: docker.DockerClient, pool_name: str
) -> None:
    first = swarm_proxy(pool={"min_instances": 2})
    await first.start()
    await eventually(
        lambda: len(pool_services(swarm, pool_name)) == 2, 40, "two services of the first run"
    )
    old_owner = pool_services(swarm, pool_name)[0]["Spec"]["Labels"][LABEL_OWNER]
    first.kill()  # SIGKILL: no cleanup at all
    assert len(pool_services(swarm, pool_name)) == 2

    second = swarm_proxy()
    await second.start()

    def reaped() -> bool:
        owners = {s["Spec"]["Labels"][LABEL_OWNER] for s in pool_services(swarm, pool_name)}
        return old_owner not in owners

    await eventually(reaped, 30, "the killed proxy's services to be reaped")

    def lease_gone() -> bool:
        rows = swarm.api.configs(filters={"label": f"{LABEL_OWNER}={old_owner}"})
        return rows == []

    await eventually(lease_gone, 10, "the killed proxy's lease to be removed with them")
    assert (await get(second.url + "/"))[0] == 200


async def test_an_app_that_exits_at_once_is_named_in_the_proxys_failure(
    swarm_proxy: MakeProxy,
) -> None:
    p = swarm_proxy(
        pool={"start_retries": 1},
        backend={"command": ["sh", "-c", "echo no-app-here; exit 3"]},
    )
    await p.start()
    status, body = await get(p.url + "/")
    assert (status, body) == (503, "Service Unavailable: no instance could be started\n")
    # the failure record names the exit, whether Swarm ended the task before it ran
    # (exited_before_ready, with the app's last log lines) or just after (died)
    status, body = await get(p.admin + "/readyz")
    assert status == 503
    assert "exited:3" in body, body
    status, metrics = await get(p.admin + "/metrics")
    assert (
        'forkproxy_instance_starts_total{result="exited_before_ready"} 1.0' in metrics
        or 'forkproxy_instance_starts_total{result="died"} 1.0' in metrics
    )
