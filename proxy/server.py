"""Assembly and lifecycle: a generation (backend + pool + forwarder), the data-path server
and the admin listener; SIGHUP reloads (proxy/reload.py), SIGTERM/SIGINT drain, systemd
is told each step (proxy/notify.py), everything is stopped on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator

from aiohttp import web

from backends.base import Backend, BackendContext
from backends.errors import BackendError
from backends.support import owner
from backends.support.extras import MissingExtra
from backends.support.table import ConfigError
from backends.support.tasks import TaskSet
from proxy import handover, open_files, reload
from proxy.admin import admin_runner, admin_site
from proxy.admin_view import AdminView, Serving
from proxy.config import Address, Config
from proxy.generation import Generation
from proxy.http import native
from proxy.http.forward import Forwarder
from proxy.http.safety import UnsafeParser, check_parsers
from proxy.http.server import Handler, HttpServer, Request
from proxy.metrics import Metrics
from proxy.notify import Notifier
from proxy.pool import Pool

log = logging.getLogger("forkproxy")
access_log = logging.getLogger("forkproxy.access")


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
    def __init__(
        self,
        cfg: Config,
        backend: Backend | None = None,
        *,
        sockets: handover.Inherited | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.gen = Generation(cfg, self.metrics, owner.new_owner_id(), backend=backend)
        self._retiring = TaskSet("reload")
        self._sockets = sockets or handover.Inherited()
        self.ready = False
        self.http = HttpServer(
            self._handler(),
            cfg.server.limits,
            upgrade=self._upgrade,
            on_reject=lambda reason: self.metrics.rejected.labels(reason).inc(),
        )
        self._admin: web.AppRunner | None = None
        self.listen_port: int = 0
        self.admin_port: int = 0

    # what the admin API and the tests read: the generation serving new requests
    @property
    def owner_id(self) -> str:
        return self.gen.ctx.owner_id

    @property
    def ctx(self) -> BackendContext:
        return self.gen.ctx

    @property
    def backend(self) -> Backend:
        return self.gen.backend

    @property
    def pool(self) -> Pool:
        return self.gen.pool

    @property
    def forwarder(self) -> Forwarder:
        return self.gen.forwarder

    def admin_view(self) -> AdminView:
        """What the admin listener reads, and no more: the serving generation on each read."""
        return AdminView(self.cfg.server, self.metrics, self._serving, lambda: self.ready)

    def _serving(self) -> Serving:
        pool = self.pool
        return Serving(
            pool, pool.backend.spares, self.owner_id, self.cfg.server.name, self.cfg.backend_type
        )

    def _handler(self) -> Handler:
        return self._access_logged if self.cfg.server.access_log else self.gen.handle

    async def start(self) -> None:
        """Prepare the backend, reap leftovers, then open the listeners."""
        check_parsers()
        log.info("data path: %s", native.check())
        await self.gen.start()
        await self._listen()
        await self._listen_admin()
        self.ready = True
        admin = self.cfg.server.admin
        log.info(
            "forkproxy listening on %s:%d (admin %s), backend %s, pool %s",
            self.cfg.server.listen.host,
            self.listen_port,
            f"{admin.host}:{self.admin_port}" if admin else "off",
            self.cfg.backend_type,
            self.cfg.server.name,
        )

    async def _listen(self) -> None:
        listen = self.cfg.server.listen
        sock = self._sockets.listen
        host = listen.host
        with ListenError.naming("server.listen", listen):
            if sock is not None:
                host = _sock_host(sock)
                log.info("server.listen: the socket systemd passed (%s)", sock.getsockname())
            elif self.cfg.server.reuse_port:
                sock = handover.bind_shared(listen)
            await self.http.listen(host, listen.port, sock=sock)
        self.listen_port = self.http.port

    async def _listen_admin(self) -> None:
        admin_at = self.cfg.server.admin
        sock = self._sockets.admin
        if admin_at is None and sock is None:
            return
        view = self.admin_view()
        self._admin = admin_runner(view)
        await self._admin.setup()
        at: Address | socket.socket
        if admin_at is None or sock is not None:
            assert sock is not None
            at = sock
        elif self.cfg.server.reuse_port:
            with ListenError.naming("server.admin", admin_at):
                at = handover.bind_shared(admin_at)
        else:
            at = admin_at
        site = admin_site(view, self._admin, at)
        with ListenError.naming("server.admin", admin_at or Address("fd", 0)):
            await site.start()
        address = self._admin.addresses[0]
        self.admin_port = int(address[1]) if isinstance(address, tuple) else 0

    async def reload(self, new: Config) -> bool:
        """Run `new` (validated already): pool settings in place, or a new generation
        that serves once one of its instances answered, the old one draining behind it.
        False: the new generation could not start; the running one serves on."""
        plan = reload.plan(self.cfg, new)
        for key in plan.needs_restart:
            log.warning("reload: %s changed; that needs a restart, still using the old value", key)
        if plan.rebuild:
            log.info("reload: starting a new generation (%s)", plan.rebuild)
            if not await self._replace(plan.cfg):
                return False
        elif plan.pool_changed:
            log.info("reload: pool settings applied in place")
            self.gen.pool.reconfigure(plan.cfg.pool)
        self.cfg = plan.cfg
        self.http.limits = plan.cfg.server.limits  # for connections accepted from now on
        self.http.handler = self._handler()
        return True

    async def _replace(self, cfg: Config) -> bool:
        gen: Generation | None = None
        try:
            gen = Generation(cfg, self.metrics, owner.new_owner_id(), self.gen.number + 1)
            await gen.start()
            await gen.serve_one()
        except BaseException as exc:  # cancelled too (a SIGTERM): nothing of it may stay
            if gen is not None:
                await gen.aclose()
            if not isinstance(exc, Exception):
                raise
            why = failure_message(exc, cfg) or f"{type(exc).__name__}: {exc}"
            log.error("reload failed, still serving generation %d: %s", self.gen.number, why)
            return False
        old, self.gen = self.gen, gen
        self._retiring.spawn(self._retire(old), f"retire:{old.number}")
        log.info("reload: generation %d serves; generation %d drains", gen.number, old.number)
        return True

    async def _retire(self, gen: Generation) -> None:
        await gen.drain(self.cfg.server.shutdown_timeout)
        await gen.aclose()
        self.gen.pool.tick()  # the closed pool zeroed the instance gauges both pools share
        log.info("generation %d closed", gen.number)

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
        await self._retiring.join()  # their requests are done or aborted by now
        await self.gen.aclose()
        if self._admin is not None:
            await self._admin.cleanup()

    async def _access_logged(self, req: Request) -> None:
        try:
            await self.gen.handle(req)
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
        await self.gen.upgrade(req)


def _sock_host(sock: socket.socket) -> str:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return str(sock.getsockname()[0])
    return "localhost"


ConfigSource = Callable[[], Config]


async def serve(cfg: Config, reread: ConfigSource | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads the config through `reread` (the file
    given at start, with the command line's overrides) and reloads."""
    cfg = open_files.prepare(cfg)
    source = reread or (lambda: cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = Notifier()
    tasks = TaskSet("serve")
    proxy: Proxy | None = None
    reloads: Reloads | None = None

    def hangup() -> None:
        # handled from the first moment: SIGHUP's default action would kill us undrained
        if reloads is None or stop.is_set():
            log.warning("SIGHUP ignored: %s", "stopping" if stop.is_set() else "still starting")
            return
        tasks.spawn(reloads.run(), "reload")

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        proxy = Proxy(cfg, sockets=handover.from_systemd())  # a missing extra shows here
        await proxy.start()
        notifier.ready(f"serving on port {proxy.listen_port}")
        tasks.spawn(notifier.keep_alive(), "watchdog")
        # a reloaded file's max_connections fits the open-file limit as the first one did
        reloads = Reloads(proxy, notifier, lambda: open_files.prepare(source()))
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
        notifier.stopping()
        await tasks.aclose()
        if proxy is not None:
            await proxy.stop()
        notifier.close()


class Reloads:
    """SIGHUP: one reload at a time, systemd told RELOADING=1 then READY=1 around it."""

    def __init__(self, proxy: Proxy, notifier: Notifier, reread: ConfigSource) -> None:
        self.proxy = proxy
        self.notifier = notifier
        self.reread = reread
        self._lock = asyncio.Lock()
        self._queued = False

    async def run(self) -> None:
        if self._queued:  # one waiting behind the running reload reads the file anyway
            log.info("SIGHUP: a reload is queued already")
            return
        self._queued = True
        async with self._lock:
            self._queued = False
            log.info("SIGHUP: reloading")
            self.notifier.reloading()
            try:
                await self._reload()
            except Exception:  # a bug, not a bad config: systemd still hears READY=1
                log.exception("reload failed, still running the previous config")
            self.notifier.ready("serving")

    async def _reload(self) -> None:
        try:
            new = await asyncio.to_thread(self.reread)  # reads a file, imports a backend
        except ConfigError as exc:
            log.error(
                "reload: %d problem(s) in the config; still running the previous one",
                len(exc.problems),
            )
            for problem in exc.problems:
                log.error("  %s", problem)
            return
        if await self.proxy.reload(new):
            log.info("reload done")
