"""The docker backend's watch on its engines: one event stream per engine (deaths and OOM
kills reach `on_event`), a lost engine marked down, and pinged every engine_retry until
it answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from forkproxy.backends.base import LABEL_POOL
from forkproxy.backends.docker.events import ContainerEvent, pump
from forkproxy.backends.docker.placement import Engines
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.health import until_back
from forkproxy.backends.engine.threads import Threads

log = logging.getLogger("forkproxy.backend.docker")


class EngineWatch:
    def __init__(
        self,
        engines: Engines,
        threads: Threads,
        pool_name: str,
        *,
        on_event: Callable[[ContainerEvent], None],
        on_down: Callable[[Engine, BaseException | str], None],
        on_back: Callable[[Engine], Awaitable[None]],
    ) -> None:
        self._threads = threads
        # Event streams block a thread each for as long as they are open.
        self._pumps = Threads("docker-events", threads=len(engines))
        self._pool_name = pool_name
        self._on_event = on_event
        self._on_down = on_down
        self._on_back = on_back
        self._streams: dict[str, Any] = {}  # engine url -> docker CancellableStream
        self._closing = False

    def close(self) -> None:
        """End every stream (and the blocking read in its thread); run() then returns."""
        self._closing = True
        for stream in list(self._streams.values()):
            stream.close()

    async def aclose(self) -> None:
        await self._pumps.drain(within=10)
        self._pumps.shutdown()

    async def run(self, engine: Engine) -> None:
        """Own one engine's event stream; reconnect an unhealthy engine every engine_retry."""
        loop = asyncio.get_running_loop()
        since: int | None = None
        while not self._closing:
            if not engine.healthy:
                if not await until_back(engine, self._threads, lambda: self._closing):
                    return
                log.info("Docker engine %s is back", engine.url)
                await self._on_back(engine)
                since = None
            try:
                stream = await self._threads.call(
                    engine.client.events,
                    decode=True,
                    since=since,
                    filters={"label": f"{LABEL_POOL}={self._pool_name}", "type": "container"},
                )
            except Exception as exc:
                self._on_down(engine, translate(exc, engine.url, "events"))
                continue
            self._streams[engine.url] = stream
            if self._closing:
                stream.close()
                return
            try:
                last = await self._pumps.call(pump, stream, loop, self._on_event, engine.url)
            finally:
                self._streams.pop(engine.url, None)
            since = last or int(time.time())
            if self._closing:
                return
            # The stream ended by itself: the engine restarted or went away.
            try:
                await self._threads.call(engine.client.ping)
            except Exception as exc:
                self._on_down(engine, f"event stream ended and ping failed: {exc}")
