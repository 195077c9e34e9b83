"""One generation of what serves requests: a backend, its pool and the forwarder over
them. A reload that changes code or the backend starts a new generation beside the
running one; requests go to the newest, the older ones drain and close."""

from __future__ import annotations

import asyncio
import logging
import time

from forkproxy import backends
from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.support.gaps import GapLog
from forkproxy.proxy.config import Config
from forkproxy.proxy.forwarding.forward import Forwarder, upstream_client
from forkproxy.proxy.forwarding.tunnel import Tunnel
from forkproxy.proxy.http.server import Request
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.pool import Pool, QueueFull

log = logging.getLogger("forkproxy")


class Generation:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        owner_id: str,
        number: int = 1,
        backend: Backend | None = None,
        gaps: GapLog | None = None,
    ) -> None:
        self.cfg = cfg
        self.number = number
        # its own owner id: a backend's leases and labels are per owner, and a retiring
        # generation removes its own (its owner id still names this live process)
        self.ctx = BackendContext(
            pool_name=cfg.server.name,
            owner_id=owner_id,
            readiness_path=cfg.pool.readiness_path,
            start_timeout=cfg.pool.start_timeout,
            # the app's learned idle gaps outlive a reload (its predecessor's, carried)
            gaps=gaps if gaps is not None else GapLog(),
        )
        if backend is None:
            backend = backends.load(cfg.backend_type).create_backend(cfg.backend, self.ctx)
        self.backend = backend
        self.pool = Pool(cfg.pool, backend, self.ctx, metrics)
        client = upstream_client(cfg, self.pool)
        self.forwarder = Forwarder(cfg, self.pool, metrics, client)
        self.tunnel = Tunnel(
            self.forwarder,
            client,
            metrics,
            header_timeout=cfg.server.upstream_header_timeout,
            idle_timeout=cfg.server.tunnel_idle_timeout,
        )
        self.active = 0  # requests (and tunnels) its handlers run
        self.requests = 0  # requests routed to it (the budget's request frequency)
        self._idle = asyncio.Event()

    async def start(self) -> None:
        await self.pool.start()

    async def serve_one(self) -> None:
        """Take one instance and give it back: proves the new code starts and answers the
        readiness probe before any client is sent to it (PoolError otherwise)."""
        pool = self.pool
        deadline = pool.clock() + pool.cfg.start_timeout * pool.cfg.start_retries
        while True:
            try:
                async with pool.lease(deadline):
                    return
            except QueueFull:  # max_queue = 0: refused, but that asked for a start
                if pool.clock() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def handle(self, req: Request) -> None:
        self.active += 1
        self.requests += 1
        try:
            await self.forwarder.handle(req)
        finally:
            self._done()

    async def upgrade(self, req: Request) -> None:
        self.active += 1
        try:
            await self.tunnel.websocket(req)
        finally:
            self._done()

    def _done(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def drain(self, grace: float) -> None:
        """Until the requests it runs are done (new ones go elsewhere), at most `grace`."""
        deadline = time.monotonic() + grace
        while self.active and (left := deadline - time.monotonic()) > 0:
            self._idle.clear()
            try:
                async with asyncio.timeout(left):
                    await self._idle.wait()
            except TimeoutError:
                break
        if self.active:
            log.warning(
                "generation %d: %d request(s) still running after %.1fs; stopping it",
                self.number,
                self.active,
                grace,
            )

    async def aclose(self) -> None:
        self.forwarder.aclose()
        await self.pool.aclose()
