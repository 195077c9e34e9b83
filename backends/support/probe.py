"""The readiness probe: GET a path until the app's answer says it is up. One rule for the
pool and every backend that probes on its own (the docker paused pool, a vSphere guest):
any status below `ready_below` (default 500) is ready. A 404 or a 401 still proves a
server that parses requests, which is what routing traffic to it needs; a 5xx (or no
answer) means not yet. Redirects are not followed: a 3xx is itself an answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiohttp

READY_BELOW = 500


class NotReady(Exception):
    """The deadline passed; `last` is what the last attempt got (a status or an error)."""

    def __init__(self, url: str, last: str) -> None:
        super().__init__(f"{url} not ready in time: {last}")
        self.url = url
        self.last = last


async def wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    *,
    ready_below: int = READY_BELOW,
    deadline: float | None = None,
    stop: asyncio.Event | None = None,
    check: Callable[[], Awaitable[None]] | None = None,
    first_delay: float = 0.002,
    max_delay: float = 0.1,
    on_miss: Callable[[str], None] | None = None,
) -> bool:
    """True once `url` answers with a status below `ready_below`; False as soon as `stop`
    is set (the instance died: no point waiting). Raises NotReady once `deadline` (a
    time.monotonic() value) has passed; without one the caller's own timeout bounds it.
    `check` runs after each failed attempt and may raise to give up (a container that
    exited). `on_miss` gets what each failed attempt got (a caller's own timeout then
    says why). Attempts are first_delay apart, growing by half up to max_delay."""
    last = "no answer"
    delay = first_delay
    while True:
        if stop is not None and stop.is_set():
            return False
        try:
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status < ready_below:
                    return True
                last = f"HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = repr(exc)
        if on_miss is not None:
            on_miss(last)
        if check is not None:
            await check()
        if deadline is not None and time.monotonic() > deadline:
            raise NotReady(url, last)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        delay = min(delay * 1.5, max_delay)
