"""Assembly and lifecycle: backend + pool + data-path server + admin listener,
graceful drain on SIGTERM/SIGINT, everything stopped on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator

from aiohttp import web

import backends
from backends.base import Backend, BackendContext
from backends.errors import BackendError
from backends.support import owner
from backends.support.extras import MissingExtra
from proxy import logs, open_files
from proxy.admin import admin_runner, admin_site
from proxy.config import Address, Config
from proxy.http import native
from proxy.http.forward import Forwarder
from proxy.http.safety import UnsafeParser, check_parsers
from proxy.http.server import HttpServer, Request
from proxy.http.tunnel import websocket
from proxy.metrics import Metrics
from proxy.pool import Pool

log = logging.getLogger("forkproxy")


class ListenError(OSError):
    """A listener could not be opened; says which key's address."""

    @staticmethod
    @contextlib.contextmanager
    def naming(key: str, address: Address) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            # asyncio's message repeats the address; the errno's text is the reason
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ListenError(exc.errno, f"{key} ({address}): {reason}") from exc


class StartupFailed(Exception):
    """The proxy could not start; the reason is logged already (exit code 3)."""


def failure_message(exc: BaseException, cfg: Config) -> str | None:
    """One line a person can act on, for the errors that stop a proxy from starting."""
    if isinstance(exc, BackendError | MissingExtra):
        return f"backend {cfg.backend_type} cannot start: {exc}"
    if isinstance(exc, UnsafeParser | native.StaleBuild):
        return f"refusing to run: {exc}"
    if isinstance(exc, ListenError):
        return f"cannot listen: {exc.strerror}"
    if isinstance(exc, OSError):
        return f"cannot start: {exc}"
    return None


class Proxy:
    def __init__(self, cfg: Config, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.owner_id = owner.new_owner_id()  # provably dead once this process is gone
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
        log.info("data path: %s", native.check())
        await self.pool.start()
        listen = self.cfg.server.listen
        with ListenError.naming("server.listen", listen):
            await self.http.listen(listen.host, listen.port)
        self.listen_port = self.http.port
        if (admin_at := self.cfg.server.admin) is not None:
            self._admin = admin_runner(self)
            await self._admin.setup()
            site = admin_site(self, self._admin, admin_at)
            with ListenError.naming("server.admin", admin_at):
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
        if self.cfg.server.drain_delay and self.listen_port:
            # /readyz says 503 while we still accept: a load balancer stops sending
            # before the listener closes, so no client sees a refused connection
            log.info(
                "not ready; accepting for %.1fs more (drain_delay)", self.cfg.server.drain_delay
            )
            await asyncio.sleep(self.cfg.server.drain_delay)
        await self.http.shutdown(self.cfg.server.shutdown_timeout)
        self.forwarder.aclose()
        await self.pool.aclose()
        if self._admin is not None:
            await self._admin.cleanup()

    async def _access_logged(self, req: Request) -> None:
        # ids only here: with the access log off a request pays nothing for them
        req.request_id = logs.take_request_id(req)
        sent = req.conn.sent
        try:
            await self.forwarder.handle(req)
        finally:
            logs.log_access(req, req.conn.sent - sent)

    async def _upgrade(self, req: Request) -> None:
        await websocket(self.forwarder, req)


async def serve(cfg: Config) -> None:
    cfg = open_files.prepare(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy: Proxy | None = None
    try:
        proxy = Proxy(cfg)  # a backend's missing extra shows here
        await proxy.start()
        await stop.wait()
        log.info("signal received: draining")
    except Exception as exc:
        # Why it stops comes first, then the shutdown it causes.
        if (why := failure_message(exc, cfg)) is not None:
            log.error("%s", why)
            log.debug("details", exc_info=exc)
            raise StartupFailed(why) from exc
        raise
    finally:
        if proxy is not None:
            await proxy.stop()
