"""The vsphere backend for the elasticity section: a vcsim harness and a running,
container-backed parent VM for the run, torn down after. Simulator figures: a clone is a
`docker run` behind the SOAP calls, not a real Instant Clone."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

PASSWORD_ENV = "FORKPROXY_BENCH_VCSIM_PASSWORD"


@contextlib.asynccontextmanager
async def vsphere_backend(work: Path, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The [backend] table of a proxy that clones from a fresh parent on a fresh vcsim.
    Raises harness.Unavailable (or RuntimeError) when the simulator cannot run here."""
    from tests.backends.vsphere import harness

    sim = await asyncio.to_thread(harness.start, work / "vcsim")
    try:
        si = await asyncio.to_thread(sim.connect)
        parent = await asyncio.to_thread(harness.make_parent, si)
        os.environ[PASSWORD_ENV] = sim.password  # the proxy subprocess inherits it
        try:
            yield {
                "type": "vsphere",
                "host": sim.host,
                "port": sim.port,
                "user": sim.user,
                "password_env": PASSWORD_ENV,
                "ca_file": sim.ca_file,
                "parent_vm": parent,
                "name_prefix": prefix,
                "guest_ip_timeout": "30s",
            }
        finally:
            await asyncio.to_thread(harness.remove_vm, si, parent)
    finally:
        await asyncio.to_thread(sim.stop)
