"""The vsphere backend against the real vcsim harness: Instant Clones and linked clones that
serve HTTP from their own containers, the ownership guard, session expiry, crash recovery."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import pytest

from forkproxy.backends.base import BackendContext, Instance
from forkproxy.backends.errors import BackendConfigError, StartError, StopError
from forkproxy.backends.vsphere.backend import Clone
from tests.backends.contract import deaths, get, recording_context
from tests.backends.vsphere.conftest import (
    MakeBackend,
    Vcsim,
    docker_names,
    find_vm,
    make_vm,
    vm_names,
    wait_task,
)
from tests.conftest import eventually

pytestmark = [pytest.mark.vsphere, pytest.mark.timeout(180)]


def new_id() -> str:
    return uuid.uuid4().hex[:10]


async def identity(instance: Instance) -> str:
    """The clone's /cgi-bin/env: its hostname and the VMX_GUESTINFO_* env the simulator gave
    its container from the clone's guestinfo.* extraConfig."""
    last: Exception | None = None
    for _ in range(100):
        try:
            status, body = await get(instance.endpoint.url + "/cgi-bin/env", timeout=2)
            if status == 200:
                return body.decode()
        except Exception as exc:  # the container's httpd is still starting
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"{instance.endpoint.url} never served /cgi-bin/env: {last!r}")


@pytest.mark.parametrize("mode", ["instant", "linked"])
async def test_clones_serve_their_own_identity_and_stop_removes_them(
    make_backend: MakeBackend, si: Any, ctx: BackendContext, mode: str
) -> None:
    extra = {"mode": "linked", "snapshot": "base"} if mode == "linked" else {}
    backend = make_backend(guestinfo={"role": "web-{index}"}, **extra)
    await backend.prepare()
    a_id, b_id = new_id(), new_id()
    a, b = await asyncio.gather(backend.start(a_id), backend.start(b_id))

    assert a.endpoint.host != b.endpoint.host, "each clone has its own guest IP"
    assert {"clone_task", "guest_ip"} <= set(a.phases)
    env_a, env_b = await asyncio.gather(identity(a), identity(b))
    assert f"VMX_GUESTINFO_FORKPROXY_INSTANCE_ID={a_id}" in env_a
    assert f"VMX_GUESTINFO_FORKPROXY_INSTANCE_ID={b_id}" in env_b
    assert f"VMX_GUESTINFO_FORKPROXY_POOL={ctx.pool_name}" in env_a
    assert "VMX_GUESTINFO_HOSTNAME=forkproxy-" in env_a
    assert "VMX_GUESTINFO_ROLE=web-" in env_a

    names = {a.handle.name, b.handle.name}
    assert names <= vm_names(si)
    containers = {c for c in docker_names() if any(f"-{n}-" in c for n in names)}
    assert len(containers) == 2, f"one container per clone, got {containers}"

    await asyncio.gather(backend.stop(a, "test"), backend.stop(b, "test"))
    assert not names & vm_names(si)
    assert not containers & docker_names(), "the clones' containers are removed"
    assert await backend.list() == []
    await backend.stop(a, "test")  # idempotent


async def test_parent_and_foreign_vms_are_protected(
    make_backend: MakeBackend, si: Any, parent: str
) -> None:
    backend = make_backend()
    await backend.prepare()
    parent_vm = find_vm(si, parent)
    as_instance = Instance("p", "vsphere", a_endpoint(), handle=Clone(parent_vm, parent))
    with pytest.raises(StopError, match="it is the parent VM") as err:
        await backend.stop(as_instance, "test")
    assert err.value.reason == "not_owned"

    # Right prefix, but no pool marker: someone else's VM that merely looks like ours.
    stranger = make_vm(si, f"forkproxy-stranger-{new_id()}", None, power_on=True)
    try:
        fake = Instance("s", "vsphere", a_endpoint(), handle=Clone(stranger, stranger.name))
        with pytest.raises(StopError, match="lacks the marker"):
            await backend.stop(fake, "test")
        assert stranger.runtime.powerState == "poweredOn"
        assert stranger.name not in {i.meta["vm"] for i in await backend.list()}
    finally:
        wait_task(stranger.PowerOffVM_Task())
        wait_task(stranger.Destroy_Task())
    assert parent_vm.runtime.powerState == "poweredOn"


def a_endpoint() -> Any:
    from forkproxy.backends.base import Endpoint

    return Endpoint("127.0.0.1", 1)


async def test_session_expiry_mid_run_relogs_in_once(
    make_backend: MakeBackend, si: Any, vcsim: Vcsim
) -> None:
    backend = make_backend(watch_deaths=False)
    await backend.prepare()
    first = await backend.start(new_id())
    key = backend.session.content.sessionManager.currentSession.key
    si.content.sessionManager.TerminateSession([key])  # from the tests' own connection

    second = await backend.start(new_id())
    assert backend.session.relogins == 1
    assert "VMX_GUESTINFO_FORKPROXY_INSTANCE_ID=" in await identity(second)
    await backend.stop(first, "test")
    await backend.stop(second, "test")


async def test_bad_credentials_are_a_clear_config_error(
    make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = make_backend(user="mallory")
    match = "vCenter rejected the credentials for user mallory"
    with pytest.raises(BackendConfigError, match=match):
        await backend.prepare()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"parent_vm": "no-such-vm"}, "parent VM 'no-such-vm' not found in datacenter 'DC0'"),
        ({"datacenter": "DC9"}, "datacenter 'DC9' not found"),
        ({"placement": {"resource_pool": "nope"}}, "resource pool 'nope' not found"),
        ({"placement": {"datastore": "nods"}}, "datastore 'nods' not found"),
        ({"mode": "linked", "snapshot": "nosnap"}, "snapshot 'nosnap' not found on parent VM"),
        ({"parent_vm": "DC0_H0_VM0", "ca_file": None, "insecure": False}, "TLS to vCenter"),
    ],
)
async def test_missing_things_are_named(
    make_backend: MakeBackend, overrides: dict[str, Any], message: str
) -> None:
    backend = make_backend(**overrides)
    with pytest.raises(BackendConfigError, match=message):
        await backend.prepare()


async def test_powered_off_parent_is_refused_for_instant_clone(
    make_backend: MakeBackend, si: Any
) -> None:
    name = f"fp-off-{new_id()}"
    vm = make_vm(si, name, None, power_on=False)
    try:
        with pytest.raises(BackendConfigError, match="is poweredOff: Instant Clone needs"):
            await make_backend(parent_vm=name).prepare()
    finally:
        wait_task(vm.Destroy_Task())


async def test_placement_is_honoured(make_backend: MakeBackend, si: Any) -> None:
    backend = make_backend(
        placement={"resource_pool": "DC0/host/DC0_C0/Resources", "datastore": "LocalDS_0"}
    )
    await backend.prepare()
    inst = await backend.start(new_id())
    vm = find_vm(si, inst.handle.name)
    assert vm.resourcePool.name == "Resources"
    assert vm.resourcePool.parent.name == "DC0_C0"
    await backend.stop(inst, "test")


async def test_list_after_a_crash_finds_and_reaps_clones(
    make_backend: MakeBackend, si: Any, pool_name: str
) -> None:
    crashed_ctx = recording_context(pool_name)
    crashed = make_backend(crashed_ctx, watch_deaths=False)
    await crashed.prepare()
    left = [await crashed.start(new_id()) for _ in range(2)]
    crashed._live.clear()  # a crash: the run ends without stopping anything
    await crashed.aclose()
    other_pool = make_backend(recording_context(f"other-{pool_name}"))
    await other_pool.prepare()
    assert await other_pool.list() == [], "another pool's clones are not ours"

    restarted = make_backend(recording_context(pool_name))
    await restarted.prepare()
    found = {i.id: i for i in await restarted.list()}
    assert set(found) == {i.id for i in left}
    assert all(i.owner_id == crashed_ctx.owner_id for i in found.values())
    for inst in found.values():
        await restarted.stop(inst, "orphan")
    assert await restarted.list() == []
    assert not {i.handle.name for i in left} & vm_names(si)


async def test_a_clone_without_an_ip_times_out_and_is_removed(
    make_backend: MakeBackend, si: Any
) -> None:
    name = f"fp-noip-{new_id()}"
    make_vm(si, name, None)  # running, but no container: its guest never reports an IP
    backend = make_backend(parent_vm=name, guest_ip_timeout="2s")
    await backend.prepare()
    failed = new_id()
    with pytest.raises(StartError) as err:
        await backend.start(failed)
    assert err.value.reason == "guest_ip_timeout"

    await eventually(lambda: f"forkproxy-{failed}" not in vm_names(si), 30, "clone removal")
    vm = find_vm(si, name)
    wait_task(vm.PowerOffVM_Task())
    wait_task(vm.Destroy_Task())


async def test_a_clone_powered_off_behind_our_back_is_reported_dead(
    make_backend: MakeBackend, si: Any, ctx: BackendContext
) -> None:
    backend = make_backend()
    await backend.prepare()
    inst = await backend.start(new_id())
    wait_task(find_vm(si, inst.handle.name).PowerOffVM_Task())
    assert await deaths(ctx).wait_for(inst.id, 15) == "powered_off"
    await backend.stop(inst, "dead")
    assert await backend.list() == []


async def test_concurrent_starts_get_one_clone_each(make_backend: MakeBackend) -> None:
    backend = make_backend(max_concurrent_clones=2, watch_deaths=False)
    await backend.prepare()
    started = await asyncio.gather(*(backend.start(new_id()) for _ in range(4)))
    assert len({i.endpoint.host for i in started}) == 4
    await asyncio.gather(*(backend.stop(i, "test") for i in started))


async def test_readiness_path_makes_the_backend_probe_itself(make_backend: MakeBackend) -> None:
    backend = make_backend(readiness_path="/", watch_deaths=False)
    await backend.prepare()
    inst = await backend.start(new_id())
    assert inst.ready, "the pool may skip its own probe"
    assert "readiness" in inst.phases
    status, _ = await get(inst.endpoint.url + "/")
    assert status == 200
    await backend.stop(inst, "test")


async def test_container_table_starts_the_app_through_a_docker_api(
    make_backend: MakeBackend, si: Any
) -> None:
    # vcsim's clones have no Docker engine inside, so this engine_url (no {ip}) points at
    # the host's: it checks the docker call, its labels and the error path, not the guest.
    import docker

    engine = "unix:///var/run/docker.sock"
    backend = make_backend(
        watch_deaths=False,
        container={"image": "forkproxy-test/httpd:latest", "command": ["sleep", "120"]}
        | {"engine_url": engine},
    )
    await backend.prepare()
    client = docker.DockerClient(base_url=engine)
    inst = await backend.start(new_id())
    try:
        assert "container" in inst.phases
        container = client.containers.get(inst.meta["container"])
        assert container.labels["io.forkproxy.instance"] == inst.id
        assert container.name == inst.handle.name
    finally:
        client.containers.get(inst.meta["container"]).remove(force=True)
        await backend.stop(inst, "test")

    broken = make_backend(
        watch_deaths=False,
        container={"image": "forkproxy-test/no-such-image:1", "engine_url": engine},
    )
    await broken.prepare()
    failed = new_id()
    with pytest.raises(StartError) as err:
        await broken.start(failed)
    assert err.value.reason == "container_failed"
    await eventually(lambda: f"forkproxy-{failed}" not in vm_names(si), 30, "clone removal")
    client.close()


async def test_ip_range_hands_out_one_static_address_per_clone(make_backend: MakeBackend) -> None:
    backend = make_backend(ip_range="10.99.0.10-10.99.0.11", watch_deaths=False)
    await backend.prepare()
    a, b = await asyncio.gather(backend.start(new_id()), backend.start(new_id()))
    addresses = set()
    for inst in (a, b):
        env = await identity(inst)
        line = next(x for x in env.splitlines() if x.startswith("VMX_GUESTINFO_FORKPROXY_IP="))
        addresses.add(line.split("=", 1)[1])
    assert addresses == {"10.99.0.10", "10.99.0.11"}
    with pytest.raises(StartError) as err:
        await backend.start(new_id())
    assert err.value.reason == "ip_exhausted"
    await backend.stop(a, "test")
    c = await backend.start(new_id())
    assert f"VMX_GUESTINFO_FORKPROXY_IP={a.handle.ip}" in await identity(c)
    await backend.stop(b, "test")
    await backend.stop(c, "test")


async def test_clone_tasks_in_flight_are_bounded(make_backend: MakeBackend, vcsim: Vcsim) -> None:
    # Each clone waits 1.5 s for its guest IP; with 2 slots, 4 starts need two rounds, so
    # they cannot all be done in less than 3 s (a lower bound: not timing-fragile).
    backend = make_backend(max_concurrent_clones=2, watch_deaths=False)
    await backend.prepare()
    vcsim.set_guest_ip_delay(1500)
    try:
        t0 = time.monotonic()
        started = await asyncio.gather(*(backend.start(new_id()) for _ in range(4)))
        elapsed = time.monotonic() - t0
    finally:
        vcsim.set_guest_ip_delay(0)
    assert elapsed >= 3.0, f"4 starts through 2 slots took only {elapsed:.2f}s"
    # vcsim batches updates every 250 ms, so the task's end may be seen that much late.
    assert all(i.phases["guest_ip"] >= 1.0 for i in started), [i.phases for i in started]
    await asyncio.gather(*(backend.stop(i, "test") for i in started))


async def test_the_password_is_never_logged_and_insecure_is_warned(
    make_backend: MakeBackend, vcsim: Vcsim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = make_backend(ca_file=None, insecure=True, watch_deaths=False)
    await backend.prepare()
    inst = await backend.start(new_id())
    await backend.stop(inst, "test")
    await backend.aclose()
    assert "certificate of 127.0.0.1 is NOT verified" in caplog.text
    assert vcsim.password not in caplog.text
