"""Shared by the fault suite: a forkproxy process config for a fault app, and what a
pool still holds on this machine (read from /proc, as the proxy's own sweep does)."""

from __future__ import annotations

import re
import uuid

import aiohttp

from forkproxy.backends.process import leftovers
from tests.conftest import ProxyProcess


def config(*, pool: str = "", app: str = "tests.faults.apps:tiny_app", **sections: str) -> str:
    """A proxy config (TOML) in fork mode; `sections` add lines: pool="max_instances = 4"."""
    name = f"faults-{uuid.uuid4().hex[:8]}"
    extra = {"server": "", "pool": "", "backend": ""}
    extra.update(sections)
    if "idle_ttl" not in pool:
        pool = f'idle_ttl = "60s"\n{pool}'
    return f"""
[server]
name = "{name}"
shutdown_timeout = "5s"
{extra["server"]}
[pool]
{pool}
{extra["pool"]}
[backend]
type = "process"
mode = "fork"
app = "{app}"
{extra["backend"]}
"""


def pool_name(p: ProxyProcess) -> str:
    found = re.search(r'^name = "([^"]+)"', p.config.read_text(), re.M)
    assert found is not None
    return found.group(1)


def left_behind(pool: str) -> list[leftovers.Found]:
    return leftovers.scan(pool)


async def metric(p: ProxyProcess, name: str) -> dict[str, float]:
    """Every sample of metric family `name` on the proxy's /metrics: {labels: value}."""
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
