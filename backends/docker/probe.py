"""Readiness probe for containers the docker backend warms itself (the paused pool and
adopted leftovers): GET readiness_path until 200, and notice a container that exits."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from backends.base import Endpoint
from backends.docker.ops import Container
from backends.docker.threads import Threads
from backends.errors import StartError

log = logging.getLogger("forkproxy.backend.docker")


async def probe(
    session: aiohttp.ClientSession,
    worker: Threads,
    c: Container,
    endpoint: Endpoint,
    path: str,
    deadline: float,
) -> None:
    url = endpoint.url + path
    next_check = time.monotonic() + 0.5
    last = "no answer"
    while True:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = repr(exc)
        now = time.monotonic()
        if now >= next_check:  # an HTTP error alone cannot tell "slow" from "gone"
            next_check = now + 0.5
            attrs = await worker.call(c.engine.client.api.inspect_container, c.id)
            state = attrs.get("State") or {}
            if not state.get("Running"):
                logs = await worker.call(c.engine.logs_tail, c.id)
                err = StartError(
                    f"container {c.name} exited before ready (exit {state.get('ExitCode')});"
                    f" last log lines:\n{logs}",
                    reason="oom" if state.get("OOMKilled") else "exited_before_ready",
                )
                log.warning("%s", err)
                raise err
        if now > deadline:
            raise StartError(f"{url} not ready in time: {last}", reason="ready_timeout")
        await asyncio.sleep(0.02)
