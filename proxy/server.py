"""Assembly and lifecycle: backend + pool + data-path server + admin listener,
graceful drain on SIGTERM/SIGINT, everything stopped on the way out."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
import time

from aiohttp import web

import backends
from backends.base import Backend, BackendContext
from proxy.admin import admin_app
from proxy.config import Config
from proxy.http.forward import Forwarder
from proxy.http.safety import check_parsers
from proxy.http.server import HttpServer, Request
from proxy.http.tunnel import websocket
from proxy.metrics import Metrics
from proxy.pool import Pool

log = logging.getLogger("forkproxy")
access_log = logging.getLogger("forkproxy.access")


class Proxy:
    def __init__(self, cfg: Config, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.owner_id = f"{socket.gethostname()[:20]}-{secrets.token_hex(4)}"
        self.metrics = Metrics()
        self.ctx = BackendContext(
            pool_name=cfg.server.name,
            owner_id=self.owner_id,
            readiness_path=cfg.pool.readiness_path,
            start_timeout=cfg.pool.start_timeout,
        )
        if backend is None:
            backend = backends.load(cfg.backend_type).create_backend(cfg.backend, self.ctx)
        self.backend = backend
        self.pool = Pool(cfg.pool, backend, self.ctx, self.metrics)
        self.forwarder = Forwarder(cfg, self.pool, self.metrics)
        self.ready = False
        self.http = HttpServer(
            self._access_logged if cfg.server.access_log else self.forwarder.handle,
            cfg.server.limits,
            upgrade=self._upgrade,
            on_reject=lambda reason: self.metrics.rejected.labels(reason).inc(),
        )
        self._admin: web.AppRunner | None = None
        self.listen_port: int = 0
        self.admin_port: int = 0

    async def start(self) -> None:
        """Prepare the backend, reap leftovers, then open the listeners."""
        check_parsers()
        await self.pool.start()
        listen = self.cfg.server.listen
        await self.http.listen(listen.host, listen.port)
        self.listen_port = self.http.port
        if self.cfg.server.admin is not None:
            self._admin = web.AppRunner(admin_app(self), access_log=None)
            await self._admin.setup()
            site = web.TCPSite(self._admin, self.cfg.server.admin.host, self.cfg.server.admin.port)
            await site.start()
            self.admin_port = int(self._admin.addresses[0][1])
        self.ready = True
        admin = self.cfg.server.admin
        log.info(
            "forkproxy listening on %s:%d (admin %s), backend %s, pool %s",
            listen.host,
            self.listen_port,
            f"{admin.host}:{self.admin_port}" if admin else "off",
            self.cfg.backend_type,
            self.cfg.server.name,
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (shutdown_timeout), stop instances."""
        self.ready = False
        await self.http.shutdown(self.cfg.server.shutdown_timeout)
        self.forwarder.aclose()
        await self.pool.aclose()
        if self._admin is not None:
            await self._admin.cleanup()
        log.info("forkproxy stopped")

    async def _access_logged(self, req: Request) -> None:
        try:
            await self.forwarder.handle(req)
        finally:
            access_log.info(
                '%s "%s %s HTTP/%s" %d %.1fms',
                req.peer,
                req.method,
                req.path.decode("latin-1"),
                req.version,
                req.status or 499,
                (time.monotonic() - req.started) * 1000,
            )

    async def _upgrade(self, req: Request) -> None:
        await websocket(self.forwarder, req)


async def serve(cfg: Config) -> None:
    proxy = Proxy(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await proxy.start()
        await stop.wait()
        log.info("signal received: draining")
    finally:
        await proxy.stop()
