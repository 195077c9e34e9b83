"""Two vsphere proxies with one pool name on the vcsim harness (tests/replicas.py): neither
destroys the other's clones; a SIGKILLed one's clones are destroyed by the survivor (its
owner id proves it dead on this host), and an owner on another host is judged by its lease."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from forkproxy.backends.vsphere.inventory import KEY_OWNER
from tests.backends.contract import recording_context
from tests.backends.vsphere.conftest import PASSWORD_ENV, Vcsim
from tests.backends.vsphere.test_vsphere_e2e import config_text
from tests.conftest import ProxyProcess
from tests.replicas import lease_decides, remote_owner, run_scenario

pytestmark = [pytest.mark.vsphere, pytest.mark.slow, pytest.mark.timeout(600)]


def owned_clones(si: Any, prefix: str, owner: str) -> int:
    from pyVmomi import vim, vmodl

    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True
    )
    try:
        n = 0
        for vm in view.view:
            try:
                if not vm.name.startswith(prefix) or vm.config is None:
                    continue
                extra = {o.key: str(o.value) for o in vm.config.extraConfig}
            except vmodl.fault.ManagedObjectNotFound:
                continue  # destroyed while we looked
            n += extra.get(KEY_OWNER) == owner
        return n
    finally:
        view.DestroyView()


async def test_vsphere_replicas_share_a_pool_name(
    vcsim: Vcsim,
    parent: str,
    si: Any,
    monkeypatch: pytest.MonkeyPatch,
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, vcsim.password)
    prefix = f"fprep-{id(si) % 10**6}-"
    text = config_text(vcsim, parent, f"rep-{id(si) % 10**6}", prefix, "120s")
    text = text.replace("[pool]\n", '[pool]\nmin_instances = 1\norphan_timeout = "12s"\n')

    async def left_of(owner: str) -> int:
        return await asyncio.to_thread(owned_clones, si, prefix, owner)

    survivor = await run_scenario(
        proxy_process, text, "/cgi-bin/slow?ms=3000", left_of, 12, start_timeout=90
    )
    assert "reaping instance" in survivor.log.read_text()


async def test_an_owner_on_another_host_is_judged_by_its_lease(
    make_backend: Callable[..., Any], pool_name: str
) -> None:
    """The lease is a custom field on the parent VM: while the remote run sets it, its
    clone stays; once it stops, a survivor destroys the clone within orphan_timeout."""
    remote_ctx = recording_context(pool_name)
    remote_ctx.owner_id = remote_owner("vs")
    remote = make_backend(remote_ctx, watch_deaths=False)
    await remote.prepare()
    inst = await remote.start(f"r{uuid.uuid4().hex[:6]}")
    survivor_ctx = recording_context(pool_name)
    survivor = make_backend(survivor_ctx, watch_deaths=False)
    await survivor.prepare()
    t0 = time.perf_counter()
    for _ in range(10):
        await survivor.heartbeat()
    print(f"vsphere: heartbeat {(time.perf_counter() - t0) * 100:.1f} ms (vcsim)")
    leases = await survivor.leases()
    assert leases is not None and remote_ctx.owner_id in leases
    assert survivor_ctx.owner_id in leases
    took = await lease_decides(survivor, survivor_ctx.owner_id, remote, inst.id, within=6.0)
    print(f"vsphere: reaped {took:.1f}s after the last beat (orphan_timeout 6s)")
    await survivor.aclose()  # a clean stop drops its lease
    assert survivor_ctx.owner_id not in (await remote.leases() or {})
