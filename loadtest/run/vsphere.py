"""The vsphere backend for the elasticity section: a running, container-backed parent VM on
the simulator .ci/vcsim.sh started, removed after the run. Simulator figures: a clone is a
`docker run` behind the SOAP calls, not a real Instant Clone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from forkproxy.loadtest.coldstart.vsphere import backend_keys


@contextlib.asynccontextmanager
async def vsphere_backend(prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The [backend] table of a proxy that clones a fresh parent on the running simulator.
    Raises vcsim.Unavailable (with the reason) when there is none, ModuleNotFoundError where
    the harness is not installed (it is in a checkout only)."""
    from forkproxy.loadtest import vcsim

    sim = await asyncio.to_thread(vcsim.find)
    await asyncio.to_thread(vcsim.ensure_network)
    si = await asyncio.to_thread(sim.connect)
    try:
        parent = await asyncio.to_thread(vcsim.make_parent, si)
        keys = backend_keys(sim, parent, prefix)  # the proxy subprocess inherits the env
        try:
            yield {"type": "vsphere", **keys, "guest_ip_timeout": "30s"}
        finally:
            await asyncio.to_thread(vcsim.remove_vm, si, parent)
    finally:
        await asyncio.to_thread(sim.disconnect, si)
