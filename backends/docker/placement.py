"""Where the docker backend puts a container: the least loaded of its healthy engines.
An engine that fails is marked down and skipped until a ping (every `engine_retry`) answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence

from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.errors import BackendUnavailable, StartError

log = logging.getLogger("forkproxy.backend.docker")


class Engines:
    def __init__(self, urls: Sequence[str], retry: float, answer_within: float) -> None:
        self._all = [Engine(url, retry, answer_within) for url in urls]

    def __iter__(self) -> Iterator[Engine]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __repr__(self) -> str:
        return f"{len(self.healthy())}/{len(self._all)} engines up"

    def healthy(self) -> list[Engine]:
        return [e for e in self._all if e.healthy]

    def detail(self) -> str:
        return "; ".join(f"{e.url}: {e.last_error}" for e in self._all)

    async def connect(self, threads: Threads) -> list[Engine]:
        """Connect every engine; skip (and log) the unreachable ones unless none is left."""
        results = await asyncio.gather(
            *(threads.call(e.connect) for e in self._all), return_exceptions=True
        )
        for engine, result in zip(self._all, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "Docker engine %s unreachable, skipped (retry every %ss): %s",
                    engine.url,
                    engine.retry_after,
                    result,
                )
        healthy = self.healthy()
        if not healthy:
            raise BackendUnavailable(f"no Docker engine reachable: {self.detail()}")
        return healthy

    def pick(self) -> Engine:
        """The healthy engine holding the fewest of our containers (live and parked)."""
        healthy = self.healthy()
        if not healthy:
            raise StartError(
                f"no healthy Docker engine ({self.detail()})", reason="engine_unreachable"
            )
        return min(healthy, key=lambda e: len(e.containers))

    def exhausted(self, tried: set[str]) -> bool:
        """True when every healthy engine's url is in `tried`."""
        return all(e.url in tried or not e.healthy for e in self._all)

    def mark_down(self, engine: Engine, error: BaseException | str) -> None:
        if engine.healthy:
            log.warning("Docker engine %s marked unhealthy: %s", engine.url, error)
        engine.mark_down(error)

    def close(self) -> None:
        for engine in self._all:
            engine.close()
