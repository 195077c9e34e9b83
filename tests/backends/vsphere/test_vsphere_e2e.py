"""End to end: `forkproxy run` as a subprocess with the vsphere backend on the vcsim harness.
A request cold-starts an Instant Clone whose own container answers; idle clones are reaped;
after a SIGKILL the next proxy run destroys what the dead one left."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.backends.vsphere.conftest import PASSWORD_ENV, Vcsim, docker_names, vm_names
from tests.conftest import ProxyProcess, eventually

pytestmark = [pytest.mark.vsphere, pytest.mark.slow, pytest.mark.timeout(240)]


def config_text(vcsim: Vcsim, parent: str, name: str, prefix: str, idle_ttl: str) -> str:
    return f"""
[server]
name = "{name}"
shutdown_timeout = "20s"

[pool]
idle_ttl = "{idle_ttl}"
max_instances = 2
start_timeout = "60s"
readiness_path = "/"

[backend]
type = "vsphere"
host = "{vcsim.host}"
port = {vcsim.port}
user = "{vcsim.user}"
password_env = "{PASSWORD_ENV}"
ca_file = "{vcsim.ca_file}"
parent_vm = "{parent}"
name_prefix = "{prefix}"
guest_ip_timeout = "30s"
"""


def clones(si: Any, prefix: str) -> set[str]:
    return {name for name in vm_names(si) if name.startswith(prefix)}


async def fetch(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as http,
        http.get(url) as resp,
    ):
        return resp.status, await resp.text()


@pytest.fixture
def vsphere_proxy(
    vcsim: Vcsim,
    parent: str,
    monkeypatch: pytest.MonkeyPatch,
    proxy_process: Callable[[str], ProxyProcess],
) -> Callable[..., tuple[ProxyProcess, str]]:
    monkeypatch.setenv(PASSWORD_ENV, vcsim.password)  # the subprocess inherits it
    tag = uuid.uuid4().hex[:6]
    prefix = f"fpe2e-{tag}-"

    def make(idle_ttl: str = "60s") -> tuple[ProxyProcess, str]:
        text = config_text(vcsim, parent, f"e2e-{tag}", prefix, idle_ttl)
        return proxy_process(text), prefix

    return make


async def test_request_cold_starts_an_instant_clone_then_idle_reaps_it(
    vsphere_proxy: Callable[..., tuple[ProxyProcess, str]], si: Any
) -> None:
    proxy, prefix = vsphere_proxy(idle_ttl="2s")
    await proxy.start(timeout=60)
    assert clones(si, prefix) == set(), "nothing runs before the first request"

    status, body = await fetch(proxy.url + "/cgi-bin/env")
    assert status == 200, body
    made = clones(si, prefix)
    assert len(made) == 1
    name = made.pop()
    assert any(f"-{name}-" in c for c in docker_names()), "the clone runs its own container"

    # The answer came from that clone's own container: its identity is the instance's.
    _, listing = await fetch(proxy.admin + "/instances")
    (inst,) = json.loads(listing)["instances"]
    assert inst["meta"]["vm"] == name
    assert f"VMX_GUESTINFO_FORKPROXY_INSTANCE_ID={inst['id']}" in body
    assert f"VMX_GUESTINFO_HOSTNAME={name}" in body

    await eventually(lambda: not clones(si, prefix), 60, "the idle clone to be reaped")

    proxy.signal(signal.SIGTERM)
    assert await proxy.wait(30) == 0


async def test_after_sigkill_the_next_run_destroys_the_leftover_clone(
    vsphere_proxy: Callable[..., tuple[ProxyProcess, str]], si: Any
) -> None:
    first, prefix = vsphere_proxy()
    await first.start(timeout=60)
    status, _ = await fetch(first.url + "/")
    assert status == 200
    left = clones(si, prefix)
    assert len(left) == 1

    first.kill()  # SIGKILL: no shutdown, the clone stays
    assert clones(si, prefix) == left

    second, same_prefix = vsphere_proxy()
    assert same_prefix == prefix
    await second.start(timeout=60)  # prepare + reap leftovers before it is ready
    await eventually(lambda: not clones(si, prefix), 30, "the leftover clone to be destroyed")
    second.signal(signal.SIGTERM)
    assert await second.wait(30) == 0
    assert clones(si, prefix) == set()
