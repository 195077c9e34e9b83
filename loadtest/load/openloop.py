"""An open-loop client: each request is sent at its scheduled time whether or not earlier
ones have been answered (a closed loop would slow down with the server and hide its
queueing). Requests go to one listener; the app is chosen by the Host header."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Result:
    index: int  # into the schedule
    at: float  # scheduled, seconds from the start
    late: float  # how far behind its schedule it was sent (the client's own lag)
    latency: float  # seconds to the whole response, or to the error
    status: int  # 0: no response (connection error, timeout)
    error: str = ""


async def run(
    url: str,
    schedule: Sequence[tuple[float, str]],
    *,
    timeout: float = 60.0,
    on_result: Callable[[Result], None] | None = None,
    request_id: Callable[[int], str] | None = None,
) -> list[Result]:
    """Send GET `url` with Host `host` at each (seconds from now, host); results in
    schedule order. Bounded by the schedule's length and `timeout` per request.
    `request_id(k)`: an X-Request-ID for request k (to find it in the proxy's access log)."""
    results: list[Result | None] = [None] * len(schedule)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def one(s: aiohttp.ClientSession, k: int, at: float, host: str, t0: float) -> None:
        sent = time.monotonic()
        status, error = 0, ""
        headers = {"Host": host}
        if request_id is not None:
            headers["X-Request-ID"] = request_id(k)
        try:
            async with s.get(url, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            error = f"{type(e).__name__}: {e}"[:200]
        r = Result(k, at, sent - t0 - at, time.monotonic() - sent, status, error)
        results[k] = r
        if on_result is not None:
            on_result(r)

    async with (
        aiohttp.ClientSession(connector=connector, timeout=client_timeout) as s,
        asyncio.TaskGroup() as tg,
    ):
        t0 = time.monotonic()
        for k, (at, host) in enumerate(schedule):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(one(s, k, at, host, t0))
    return [r for r in results if r is not None]
