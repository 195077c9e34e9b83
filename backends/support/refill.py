"""Keeping a pool of spares topped up (the docker paused pool, the swarm backend's parked
spares): fill() parks spares two at a time until the pool holds `size` with those in
flight counted; run() does it in the background whenever set() is called, backing off
after a failure. The pool says how one spare is parked and how many it holds.

A spare taken for a start is replaced only `SETTLE` seconds later (taken()): its
replacement's create and start load the engine and the CPU for a few hundred ms, and
sharing them with the taker's unpause and first request cost that request ~4 ms p50 on
this 2-core host (unpause -> first byte 16.4 ms alone, 20.8 ms beside a create+start)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from backends.errors import BackendConfigError, BackendError, StartError

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
    ) -> None:
        self.size = size
        self.filling = 0  # spares being started and probed
        self.closing = False
        self._held = held
        self._park_one = park_one
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

    async def fill(self, deadline: float | None) -> None:
        """Top the pool up, two spares at a time (the machine is small)."""
        while not self.closing:
            need = self.size - self._held() - self.filling
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
