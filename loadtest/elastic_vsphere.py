"""The vsphere backend for the elasticity section: a vcsim harness and a running,
container-backed parent VM for the run, torn down after. Simulator figures: a clone is a
`docker run` behind the SOAP calls, not a real Instant Clone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any


@contextlib.asynccontextmanager
async def vsphere_backend(work: Path, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The [backend] table of a proxy that clones from a fresh parent on a fresh vcsim.
    Raises harness.Unavailable (or RuntimeError) when the simulator cannot run here."""
    from loadtest.bench_vsphere import backend_keys
    from tests.backends.vsphere import harness

    sim = await asyncio.to_thread(harness.start, work / "vcsim")
    try:
        si = await asyncio.to_thread(sim.connect)
        parent = await asyncio.to_thread(harness.make_parent, si)
        keys = backend_keys(sim, parent, prefix)  # the proxy subprocess inherits the env
        try:
            yield {"type": "vsphere", **keys, "guest_ip_timeout": "30s"}
        finally:
            await asyncio.to_thread(harness.remove_vm, si, parent)
    finally:
        await asyncio.to_thread(sim.stop)
