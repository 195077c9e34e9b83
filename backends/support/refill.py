"""Keeping a pool of spares topped up (the docker paused pool, the swarm backend's parked
spares): fill() parks spares two at a time until the pool holds `size` with those in
flight counted; run() does it in the background whenever set() is called, backing off
after a failure. The pool says how one spare is parked and how many it holds.

A pool whose spares come back when their instance is drained (docker recycles them:
backends/docker/paused.py) also says how many taken ones are still `warm`: those count
towards `size` too, so `size` bounds the containers kept warm, parked or serving, and a
load that takes them all does not start replacements it will give back on the way down.
One spare is still kept parked whatever serves (`need()`), so a start beyond the warm set
is an unpause while the refill catches up, not a create.

A spare taken for a start is replaced only `SETTLE` seconds later (taken()): its
replacement's create and start load the engine and the CPU for a few hundred ms, and
sharing them with the taker's unpause and first request cost that request ~4 ms p50 on
this 2-core host (unpause -> first byte 16.4 ms alone, 20.8 ms beside a create+start)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from forkproxy.backends.errors import BackendConfigError, BackendError, StartError

# Seconds a taken spare's first request gets before its replacement is started: the
# proxy forwards within a few ms of the start returning; a loaded machine gets slack.
SETTLE = 0.1


class Refill:
    def __init__(
        self,
        size: int,
        held: Callable[[], int],
        park_one: Callable[[], Awaitable[None]],
        log: logging.Logger,
        warm: Callable[[], int] = lambda: 0,
    ) -> None:
        self.size = size
        self.filling = 0  # spares being started and probed
        self.closing = False
        self._held = held
        self._park_one = park_one
        self._warm = warm  # taken spares that come back when drained
        self._log = log
        self._wanted = asyncio.Event()
        self._quiet_until = 0.0  # time.monotonic(): no refill starts before it

    def set(self) -> None:
        """A spare was lost: top up."""
        self._wanted.set()

    def taken(self, settle: float = SETTLE) -> None:
        """A spare was taken for a start: top up once its first request had `settle` s."""
        self._quiet_until = max(self._quiet_until, time.monotonic() + settle)
        self._wanted.set()

    def stop(self) -> None:
        """Closing: run() returns, fill() parks no more."""
        self.closing = True
        self._wanted.set()

    async def run(self) -> None:
        backoff = 0.5
        while not self.closing:
            await self._wanted.wait()
            quiet = self._quiet_until - time.monotonic()
            if quiet > 0:  # once per round: a steady stream of takes cannot starve it
                await asyncio.sleep(quiet)
            self._wanted.clear()
            try:
                await self.fill(deadline=None)
                backoff = 0.5
            except BackendError as exc:
                self._log.warning("paused pool refill failed (retry in %.1fs): %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._wanted.set()

    async def prime(self, deadline: float, image: str) -> None:
        """The fill at startup: a pool that cannot be filled is a config problem."""
        try:
            await self.fill(deadline)
        except BackendError as exc:
            raise BackendConfigError(
                f"the paused pool could not be filled from image {image!r}: {exc}"
            ) from exc

    def need(self) -> int:
        """Spares to start now: up to `size` with the warm ones in use counted, and never
        fewer than one parked (or being parked)."""
        have = self._held() + self.filling
        return max(self.size - have - self._warm(), min(self.size, 1) - have)

    async def fill(self, deadline: float | None) -> None:
        """Top the pool up, two spares at a time (the machine is small)."""
        while not self.closing:
            need = self.need()
            if need <= 0:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise StartError("timed out filling the paused pool", reason="timeout")
            results = await asyncio.gather(
                *(self._one() for _ in range(min(need, 2))), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BackendError):
                    raise r
                if isinstance(r, BaseException):
                    raise StartError(f"paused pool: {r!r}") from r

    async def _one(self) -> None:
        self.filling += 1
        try:
            await self._park_one()
        finally:
            self.filling -= 1
