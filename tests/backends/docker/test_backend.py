"""The docker backend against a real engine: cold and paused-pool starts serve HTTP,
deaths are reported with their reason, bad worlds fail clearly, nothing leaks."""

from __future__ import annotations

import asyncio
import time

import docker
import pytest

from forkproxy.backends.base import LABEL_INSTANCE, LABEL_OWNER, LABEL_POOL, Endpoint
from forkproxy.backends.docker.backend import LABEL_PAUSED
from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.engine.unpause import Unpauser, until_serving
from forkproxy.backends.errors import BackendConfigError, BackendUnavailable, StartError
from forkproxy.backends.support.refill import SETTLE
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.orphans import OrphanReaper
from tests.backends.docker.conftest import ENGINE, IMAGE, MakeBackend, http_get, pool_containers
from tests.conftest import eventually, free_port
from tests.replicas import dead_owner

pytestmark = pytest.mark.docker


def closed_tcp_url() -> str:
    return f"tcp://127.0.0.1:{free_port()}"  # nobody listens there once it is handed out


async def test_cold_start_serves_http(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(env={"GREETING": "hi"})
    inst = await h.backend.start("i1")
    assert not inst.ready  # not probed: the pool probes
    assert inst.meta["from"] == "create"
    assert set(inst.phases) == {"create", "start"}

    status, body = await http_get(inst.endpoint.url + "/cgi-bin/env")
    assert status == 200
    assert "FORKPROXY_INSTANCE_ID=i1" in body
    assert f"FORKPROXY_POOL={pool_name}" in body

    (c,) = pool_containers(docker_client, pool_name)
    assert c.name == f"forkproxy-{pool_name}-i1"
    assert c.labels[LABEL_INSTANCE] == "i1"
    assert c.labels[LABEL_OWNER] == h.ctx.owner_id
    assert c.attrs["HostConfig"]["Memory"] == 256 * 1024**2
    assert await h.backend.alive(inst)
    assert [i.id for i in await h.backend.list()] == ["i1"]

    await h.backend.stop(inst, "idle")
    assert pool_containers(docker_client, pool_name) == []
    await h.backend.stop(inst, "idle")  # idempotent
    assert not await h.backend.alive(inst)
    assert h.deaths == []  # a stop is not a death


async def test_paused_pool_start_unpauses_and_refills(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=1)
    (parked,) = pool_containers(docker_client, pool_name)
    assert parked.status == "paused"
    assert parked.labels[LABEL_PAUSED] == "true"

    inst = await h.backend.start("p1")
    assert inst.ready  # probed before it was paused
    assert inst.meta["from"] == "paused_pool"
    assert set(inst.phases) == {"unpause"}
    status, body = await http_get(inst.endpoint.url + "/", timeout=2)
    assert (status, "hello from forkproxy-test/httpd" in body) == (200, True)

    def refilled() -> bool:
        states = sorted(c.status for c in pool_containers(docker_client, pool_name))
        return states == ["paused", "running"]

    await eventually(refilled, 20, "the paused pool to refill")
    # The taken container is renamed after the instance it now serves.
    await eventually(
        lambda: docker_client.containers.get(parked.id).name == f"forkproxy-{pool_name}-p1",
        5,
        "rename",
    )
    listed = {i.id: i for i in await h.backend.list()}
    assert "p1" in listed
    assert all(i.owner_id == h.ctx.owner_id for i in listed.values())
    await h.backend.stop(inst, "idle")


async def test_a_taken_container_stopped_at_once_is_removed(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    """Served and stopped as the settle time ends (max_requests_per_instance = 1): the
    rename then sent must not race the removal, and the refill comes after."""
    h = await make_backend(paused_pool=1)
    (parked,) = pool_containers(docker_client, pool_name)
    inst = await h.backend.start("quick")
    assert (await http_get(inst.endpoint.url + "/", timeout=2))[0] == 200
    await asyncio.sleep(SETTLE - 0.01)  # the stop meets the rename as it is sent
    await h.backend.stop(inst, "max_requests")  # raises if the engine failed the removal
    assert parked.id not in {c.id for c in pool_containers(docker_client, pool_name)}
    await eventually(lambda: h.backend.spares == 1, 20, "the paused pool to refill")


async def test_a_start_cancelled_by_the_caller_leaks_nothing(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    # The pool puts start() under a timeout; create+start outlives a 10 ms one.
    h = await make_backend()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(h.backend.start("late"), 0.01)
    seen: set[str] = set()

    def created_then_removed() -> bool:
        now = {c.name for c in pool_containers(docker_client, pool_name)}
        seen.update(now)
        return bool(seen) and not now

    await eventually(created_then_removed, 15, "the abandoned container made, then removed")
    assert seen == {f"forkproxy-{pool_name}-late"}
    assert await h.backend.list() == []


async def test_killed_container_is_reported_dead(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend()
    inst = await h.backend.start("k1")
    await http_get(inst.endpoint.url + "/")
    docker_client.containers.get(inst.handle.id).kill()
    await eventually(lambda: h.deaths == [("k1", "exited:137")], 10, "on_death after docker kill")
    assert not await h.backend.alive(inst)
    await h.backend.stop(inst, "died")


async def test_oom_is_reported_as_oom(make_backend: MakeBackend) -> None:
    # PID 1 allocates 64 MB (dd's buffer) under a 16 MB limit without swap: the kernel
    # OOM-kills it and the container dies with OOMKilled set.
    h = await make_backend(
        memory="16m",
        command=["sh", "-c", "sleep 1; exec dd if=/dev/zero of=/dev/null bs=64M count=1"],
    )
    inst = await h.backend.start("m1")
    await eventually(lambda: h.deaths == [("m1", "oom")], 15, "on_death(oom)")
    await h.backend.stop(inst, "died")


async def test_oom_inside_a_request_is_not_a_death(make_backend: MakeBackend) -> None:
    # The CGI's dd is the biggest process in the cgroup: the kernel kills it, not httpd.
    h = await make_backend(memory="16m")
    inst = await h.backend.start("r1")
    await http_get(inst.endpoint.url + "/")
    status, body = await http_get(inst.endpoint.url + "/cgi-bin/alloc?mb=64")
    assert (status, "dd exited 137" in body) == (500, True)
    assert (await http_get(inst.endpoint.url + "/"))[0] == 200
    assert await h.backend.alive(inst)
    assert h.deaths == []
    await h.backend.stop(inst, "idle")


async def test_exit_before_ready_carries_the_logs(make_backend: MakeBackend) -> None:
    h = await make_backend(
        prepare=False, paused_pool=1, command=["sh", "-c", "echo no-app-here; exit 3"]
    )
    with pytest.raises(BackendConfigError) as err:
        await h.backend.prepare()
    assert "exited before ready" in str(err.value)
    assert "no-app-here" in str(err.value)


async def test_cold_exit_before_ready(make_backend: MakeBackend) -> None:
    h = await make_backend(command=["sh", "-c", "echo no-app-here; exit 3"])
    try:
        inst = await h.backend.start("e1")
    except StartError as exc:  # exited before start() looked: the logs are in the error
        assert exc.reason == "exited_before_ready"
        assert "no-app-here" in str(exc)
    else:  # exited just after: reported as a death
        await eventually(lambda: h.deaths == [("e1", "exited:3")], 10, "on_death(exited:3)")
        await h.backend.stop(inst, "died")


async def test_missing_image_is_a_config_error(make_backend: MakeBackend) -> None:
    h = await make_backend(prepare=False, image="forkproxy-test/does-not-exist:1")
    with pytest.raises(BackendConfigError) as err:
        await h.backend.prepare()
    assert err.value.reason == "image_missing"
    assert "forkproxy-test/does-not-exist:1" in str(err.value)
    assert "no pull was attempted" in str(err.value)


async def test_failed_pull_is_a_config_error(make_backend: MakeBackend) -> None:
    # No registry is assumed: whether it is unreachable or refuses, the pull fails.
    h = await make_backend(prepare=False, image="forkproxy-test/does-not-exist:1", pull="missing")
    with pytest.raises(BackendConfigError) as err:
        await h.backend.prepare()
    assert err.value.reason == "image_missing"
    assert "pulling image 'forkproxy-test/does-not-exist:1'" in str(err.value)


async def test_unreachable_engine_is_a_clear_error(make_backend: MakeBackend) -> None:
    url = closed_tcp_url()
    h = await make_backend(prepare=False, engines=[url])
    with pytest.raises(BackendUnavailable) as err:
        await h.backend.prepare()
    assert url in str(err.value)


async def test_down_second_engine_is_skipped(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    down = closed_tcp_url()
    h = await make_backend(engines=[ENGINE, down], engine_retry="30s")
    assert "1/2 engines up" in repr(h.backend)
    insts = [await h.backend.start(f"m{n}") for n in range(2)]
    assert {i.meta["engine"] for i in insts} == {ENGINE}
    for inst in insts:
        assert (await http_get(inst.endpoint.url + "/"))[0] == 200
        await h.backend.stop(inst, "idle")


async def test_leftovers_of_a_crashed_run_are_reaped(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    labels = {
        "io.forkproxy.managed": "true",
        LABEL_POOL: pool_name,
        LABEL_OWNER: dead_owner("crashed"),
        LABEL_INSTANCE: "old1",
    }
    old = docker_client.containers.run(IMAGE, detach=True, labels=labels)
    other = docker_client.containers.run(
        IMAGE, detach=True, labels={**labels, LABEL_POOL: pool_name + "-other"}
    )
    try:
        h = await make_backend()  # the pool's reaper removes it (prepare no longer does)
        await OrphanReaper(h.backend, h.ctx.owner_id, Metrics(), 60, time.monotonic).sweep()
        assert pool_containers(docker_client, pool_name) == []
        other.reload()  # another pool's container is not ours to touch
        assert other.status == "running"
    finally:
        other.remove(force=True)
        del old


async def test_adopt_moves_leftovers_into_the_paused_pool(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    first = await make_backend(paused_pool=1, owner=dead_owner("first"))
    (leftover,) = pool_containers(docker_client, pool_name)
    # Simulate a crash: forget the first backend's state without cleaning up.
    first.backend._paused._parked.clear()

    second = await make_backend(paused_pool=1, adopt=True, owner="second-run")
    (still,) = pool_containers(docker_client, pool_name)
    assert still.id == leftover.id and still.status == "paused"
    inst = await second.backend.start("a1")
    assert inst.handle.id == leftover.id and inst.ready
    assert (await http_get(inst.endpoint.url + "/", timeout=2))[0] == 200
    await second.backend.stop(inst, "idle")


async def test_aclose_leaves_nothing(
    make_backend: MakeBackend, docker_client: docker.DockerClient, pool_name: str
) -> None:
    h = await make_backend(paused_pool=2)
    await h.backend.start("c1")  # from the pool
    await h.backend.start("c2")  # from the pool
    await h.backend.start("c3")  # cold (or a refilled one)
    assert len(pool_containers(docker_client, pool_name)) >= 3
    await h.backend.aclose()
    assert pool_containers(docker_client, pool_name, markers=True) == []


async def test_an_unpause_the_engine_refuses_fails_the_start_when_nothing_answers() -> None:
    """until_serving: no answer on the endpoint (nothing listens) leaves the decision to
    the engine, whose refusal (no such container) is the start's error."""
    engine = Engine(ENGINE, retry_after=10)
    await asyncio.to_thread(engine.connect)
    threads = Threads("test", threads=2)
    unpause = Unpauser(threads)
    tasks = TaskSet("test")
    try:
        with pytest.raises(StartError, match=r"unpause on .*HTTP 404"):
            await until_serving(
                unpause(engine, "forkproxy-no-such-container"),
                Endpoint("127.0.0.1", free_port()),
                "/",
                tasks,
            )
    finally:
        await unpause.aclose()
        await tasks.aclose()
        engine.close()
        threads.shutdown()
