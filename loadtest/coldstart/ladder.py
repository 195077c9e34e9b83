"""The warm ladder's bottom rung, measured through a real proxy: the first request to a
Flask app (examples.flask_app) whose instances are gone and whose fork template was given
back (template_idle_ttl), so it starts the template and then the instance. Once with the
shared zygote (the template is a fork of a process that has Flask imported), once
without (the template is a fresh interpreter).

    python -m forkproxy.loadtest.coldstart.ladder --n 25

prints one JSON object per mode: p50/p90/max of the client's time to the whole first
response, and the medians of what the backend measured for each rung (template start,
of which the app's import, and the fork).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

import aiohttp

from forkproxy.backends.process.fork import ForkBackend
from forkproxy.loadtest.report.stats import percentile
from forkproxy.proxy.config import parse
from forkproxy.proxy.server import Proxy

APP = "examples.flask_app:app"
GIVE_BACK = "100ms"  # instances and template alike: a trial waits for both to go


def config(zygote: bool) -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "name": f"ladder-{os.getpid()}-{int(zygote)}",
        },
        "pool": {
            "idle_ttl": GIVE_BACK,
            "tick": "50ms",
            "readiness_path": "/healthz",
            "start_timeout": "30s",
        },
        "backend": {
            "type": "process",
            "mode": "fork",
            "app": APP,
            "template_idle_ttl": GIVE_BACK,
            "zygote": zygote,
        },
    }


async def _given_back(proxy: Proxy, backend: ForkBackend, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while backend.ladder()["template_up"] or proxy.pool.describe():
        if time.monotonic() > deadline:
            raise TimeoutError("the template was not given back")
        await asyncio.sleep(0.02)


async def measure(zygote: bool, n: int) -> dict[str, Any]:
    proxy = Proxy(parse(config(zygote)))
    await proxy.start()
    backend = proxy.pool.backend
    assert isinstance(backend, ForkBackend)
    first: list[float] = []
    rungs: dict[str, list[float]] = {"template_start_s": [], "template_import_s": [], "fork_s": []}
    url = f"http://127.0.0.1:{proxy.listen_port}/"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(n):
                await _given_back(proxy, backend)
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                first.append(time.perf_counter() - t0)
                ladder = backend.ladder()
                for key, values in rungs.items():
                    values.append(float(ladder[key]))
    finally:
        await proxy.stop()
    ms = sorted(x * 1000 for x in first)
    return {
        "mode": "zygote" if zygote else "no zygote",
        "n": n,
        "first_request_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p90": round(percentile(ms, 90), 1),
            "max": round(ms[-1], 1),
        },
        "backend_median_ms": {
            k: round(statistics.median(v) * 1000, 1) for k, v in rungs.items() if v
        },
    }


async def run(n: int, modes: list[bool]) -> list[dict[str, Any]]:
    return [await measure(zygote, n) for zygote in modes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=25, help="trials per mode (default 25)")
    p.add_argument("--only", choices=["zygote", "no-zygote"], help="one mode only")
    args = p.parse_args()
    modes = [True, False] if args.only is None else [args.only == "zygote"]
    for row in asyncio.run(run(args.n, modes)):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
