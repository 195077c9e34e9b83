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
from collections.abc import Callable, Iterator

from aiohttp import web

from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.errors import BackendError
from forkproxy.backends.support import owner
from forkproxy.backends.support.extras import MissingExtra
from forkproxy.backends.support.gaps import GapLog
from forkproxy.backends.support.table import ConfigError
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.proxy import handover, logs, open_files, reload
from forkproxy.proxy.admin import admin_runner, admin_site
from forkproxy.proxy.admin_view import AdminView, Serving
from forkproxy.proxy.apps import AppConfig, app_config, is_single, serves_everything
from forkproxy.proxy.config import Address, Config
from forkproxy.proxy.forwarding.forward import Forwarder
from forkproxy.proxy.generation import Generation
from forkproxy.proxy.http import native
from forkproxy.proxy.http.safety import UnsafeParser, check_parsers
from forkproxy.proxy.http.server import Handler, HttpServer, Request
from forkproxy.proxy.machine import Machine
from forkproxy.proxy.metrics import AppMetrics, Metrics
from forkproxy.proxy.notify import Notifier
from forkproxy.proxy.pool import Pool
from forkproxy.proxy.routing import Router

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
    def __init__(
        self,
        cfg: Config,
        backend: Backend | None = None,
        *,
        sockets: handover.Inherited | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.app_metrics = AppMetrics(self.metrics)
        self.machine = Machine(cfg.budget, lambda: self.gens)
        self._budget_gauges()
        # one generation per app; `backend` (tests) is the first app's
        self.gens: dict[str, Generation] = {}
        for app in cfg.apps:
            self.gens[app.name] = gen = self._generation(cfg, app, 1, backend)
            self.machine.attach(app.name, gen)
            backend = None
        self._set_routes(cfg)
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

    def _budget_gauges(self) -> None:
        """forkproxy_budget_{limit,used}{resource}, read at scrape time (a reload may
        change the caps)."""

        def read(key: str) -> Callable[[], float]:
            return lambda: float(self.machine.usage()[key] or 0)

        for resource, cap in (("instances", "max_instances"), ("memory", "max_memory")):
            self.metrics.budget_limit.labels(resource).set_function(read(cap))
            self.metrics.budget_used.labels(resource).set_function(read(resource))

    def _generation(
        self,
        cfg: Config,
        app: AppConfig,
        number: int,
        backend: Backend | None = None,
        gaps: GapLog | None = None,
    ) -> Generation:
        # not yet under the budget: a reload's new generation starts its first instance
        # beside the one it replaces (reload() attaches it once it serves)
        return Generation(
            app_config(cfg, app),
            self.app_metrics.for_app(app.name, requests=not is_single(cfg.apps)),
            owner.new_owner_id(),
            number,
            backend=backend,
            gaps=gaps,
        )

    # what the admin API and the tests read: the (first) app's generation serving new
    # requests; with [apps], self.gens holds every app's
    @property
    def gen(self) -> Generation:
        return next(iter(self.gens.values()))

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

    def _set_routes(self, cfg: Config) -> None:
        self.router = Router((a.route for a in cfg.apps), cfg.default_app or None)
        self._single = serves_everything(cfg.apps, cfg.default_app)

    def admin_view(self) -> AdminView:
        """What the admin listener reads, and no more: the serving generation on each read."""
        return AdminView(
            self.cfg.server,
            self.metrics,
            self._serving,
            self._apps,
            lambda: self.ready,
            budget=self.machine.usage,
        )

    def _serving(self) -> Serving:
        pool = self.pool
        return Serving(
            pool, pool.backend.spares, self.owner_id, self.cfg.server.name, self.cfg.backend_type
        )

    def _apps(self) -> dict[str, Serving]:
        out = {}
        for name, gen in self.gens.items():
            memory, templates = gen.pool.memory_held()
            ladder = gen.pool.backend.ladder()
            # the backend knows its template's state first hand; the sweep's listing, late
            template = gen.pool.templates.state
            if ladder is not None and "template_up" in ladder:
                template = "up" if ladder["template_up"] else "down"
            out[name] = Serving(
                gen.pool,
                gen.pool.backend.spares,
                gen.ctx.owner_id,
                gen.cfg.server.name,
                gen.cfg.backend_type,
                requests=gen.requests,
                memory=memory,
                template_memory=templates,
                template=template,
                ladder=ladder,
            )
        return out

    def _handler(self) -> Handler:
        if self.cfg.server.access_log:
            return self._access_logged
        if self._single:
            return self.gen.handle  # one app takes every request: no routing at all
        return self._routed

    def _route(self, req: Request) -> Generation | None:
        if self._single:
            return self.gen
        name = self.router.match(req.host, req.path)
        if name is None:
            req.respond(404, "Not Found: no app serves this host and path")
            return None
        return self.gens[name]

    async def _routed(self, req: Request) -> None:
        if (gen := self._route(req)) is not None:
            await gen.handle(req)

    async def start(self) -> None:
        """Prepare the backend, reap leftovers, then open the listeners."""
        check_parsers()
        log.info("data path: %s", native.check())
        await asyncio.gather(*(gen.start() for gen in self.gens.values()))
        await self._listen()
        await self._listen_admin()
        self.ready = True
        admin = self.cfg.server.admin
        log.info(
            "forkproxy listening on %s:%d (admin %s), %s",
            self.cfg.server.listen.host,
            self.listen_port,
            f"{admin.host}:{self.admin_port}" if admin else "off",
            ", ".join(
                f"app {name}: backend {g.cfg.backend_type}, pool {g.cfg.server.name}"
                for name, g in self.gens.items()
            ),
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
        """Run `new` (validated already), app by app: pool settings in place, or a new
        generation that serves once one of its instances answered, the old one draining
        behind it. Apps added start, apps removed drain. All or nothing: if one new
        generation cannot start, none replaces its predecessor (False)."""
        top = reload.plan(self.cfg, new)  # the server keys that wait for a restart
        for key in top.needs_restart:
            log.warning("reload: %s changed; that needs a restart, still using the old value", key)
        cfg = top.cfg
        old_apps = {a.name: a for a in self.cfg.apps}
        fresh: dict[str, Generation] = {}
        in_place: list[tuple[Generation, Config]] = []
        for app in cfg.apps:
            gen = self.gens.get(app.name)
            if gen is None:
                log.info("reload: app %s added", app.name)
                fresh[app.name] = self._generation(cfg, app, 1)
                continue
            before = app_config(self.cfg, old_apps[app.name])
            plan = reload.plan(before, app_config(cfg, app))
            rebuild = plan.rebuild
            if before.server.name != app_config(cfg, app).server.name:
                rebuild = "its pool name changed"
            if rebuild:
                log.info("reload: starting a new generation (%s) for app %s", rebuild, app.name)
                fresh[app.name] = self._generation(
                    cfg, app, gen.number + 1, gaps=gen.ctx.gaps.carried()
                )
            elif plan.pool_changed:
                in_place.append((gen, plan.cfg))
        if not await self._start_all(fresh):
            return False
        for gen, app_cfg in in_place:
            log.info("reload: pool settings applied in place (%s)", app_cfg.server.name)
            gen.pool.reconfigure(app_cfg.pool)
        gone = [n for n in self.gens if n not in {a.name for a in cfg.apps}]
        retired = [self.gens[n] for n in (*fresh, *gone) if n in self.gens]
        self.gens = {a.name: fresh.get(a.name) or self.gens[a.name] for a in cfg.apps}
        for old in retired:
            self._retiring.spawn(self._retire(old), f"retire:{old.cfg.server.name}:{old.number}")
        for name in gone:
            log.info("reload: app %s removed; its generation drains", name)
        self.cfg = cfg
        self._set_routes(cfg)
        self.machine.cfg = cfg.budget
        for name, gen in self.gens.items():
            self.machine.attach(name, gen)
        self.http.limits = cfg.server.limits  # for connections accepted from now on
        self.http.handler = self._handler()
        return True

    async def _start_all(self, fresh: dict[str, Generation]) -> bool:
        try:
            async with asyncio.TaskGroup() as tg:  # one fails: the others are cancelled
                for gen in fresh.values():
                    tg.create_task(self._start_one(gen))
        except BaseException as caught:  # cancelled too (a SIGTERM): nothing may stay
            await asyncio.gather(*(gen.aclose() for gen in fresh.values()))
            exc = caught
            while isinstance(exc, BaseExceptionGroup):
                exc = exc.exceptions[0]
            if not isinstance(exc, Exception):
                raise
            cfg = next(iter(fresh.values())).cfg
            why = failure_message(exc, cfg) or f"{type(exc).__name__}: {exc}"
            numbers = ", ".join(str(self.gens[n].number) for n in fresh if n in self.gens)
            log.error("reload failed, still serving generation %s: %s", numbers or "-", why)
            return False
        for gen in fresh.values():
            log.info("reload: generation %d serves (%s)", gen.number, gen.cfg.server.name)
        return True

    @staticmethod
    async def _start_one(gen: Generation) -> None:
        await gen.start()
        await gen.serve_one()

    async def _retire(self, gen: Generation) -> None:
        await gen.drain(self.cfg.server.shutdown_timeout)
        await gen.aclose()
        # the closed pool zeroed the instance gauges it shares with its successor
        for current in self.gens.values():
            current.pool.tick()
        log.info("%s generation %d closed", gen.cfg.server.name, gen.number)

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
        await asyncio.gather(*(gen.aclose() for gen in self.gens.values()))
        if self._admin is not None:
            await self._admin.cleanup()

    async def _access_logged(self, req: Request) -> None:
        await self._logged(req, self._routed)

    async def _upgrade(self, req: Request) -> None:
        # a websocket is logged once, when its tunnel closes: status 101, bytes both ways
        # from the proxy to the client, duration the tunnel's life
        if self.cfg.server.access_log:
            await self._logged(req, self._tunnel)
        else:
            await self._tunnel(req)

    async def _tunnel(self, req: Request) -> None:
        if (gen := self._route(req)) is not None:
            await gen.upgrade(req)

    async def _logged(self, req: Request, run: Handler) -> None:
        # ids only here: with the access log off a request pays nothing for them
        req.request_id = logs.take_request_id(req)
        sent = req.conn.sent
        try:
            await run(req)
        finally:
            logs.log_access(req, req.conn.sent - sent)


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
