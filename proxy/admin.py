"""The admin listener (loopback by default): the live page at /, its Server-Sent Events
at /events, /metrics, /healthz, /readyz, /instances; an optional bearer token guards
every route. Its edges: only known Host names (DNS rebinding), idle connections closed,
a cap on connections."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from forkproxy.backends.support.table import ConfigError, Problem
from forkproxy.proxy.config import Address, ServerConfig
from forkproxy.proxy.live import Sampler

if TYPE_CHECKING:
    from forkproxy.proxy.admin_view import AdminView

log = logging.getLogger("forkproxy.admin")

COOKIE = "forkproxy_admin"
_PAGE = resources.files("forkproxy.proxy") / "admin_page"
_STATIC = {"page.js": "text/javascript", "page.css": "text/css"}


def admin_token(server: ServerConfig) -> str | None:
    """The bearer token from the environment variable or file the config names."""
    if server.admin_token_env:
        token = os.environ.get(server.admin_token_env, "").strip()
        if not token:
            raise ConfigError(
                [
                    Problem(
                        "server.admin_token_env",
                        f"environment variable {server.admin_token_env} is not set or empty",
                    )
                ]
            )
        return token
    if server.admin_token_file:
        try:
            with open(server.admin_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(
                [Problem("server.admin_token_file", f"cannot read: {exc.strerror}")]
            ) from exc
        if not token:
            raise ConfigError([Problem("server.admin_token_file", "the file is empty")])
        return token
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_exposed(server: ServerConfig, token: str | None) -> None:
    if server.admin is None or _is_loopback(server.admin.host) or token:
        return
    log.warning(
        "admin listener on %s is not loopback and has no authentication: anyone who reaches "
        "it sees the live page, /instances and /metrics; set server.admin_token_env or "
        "server.admin_token_file",
        server.admin,
    )


def _host_name(host: str) -> str:
    """The name in a Host header, lowercased, without port, brackets or a final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_middleware(server: ServerConfig) -> Middleware | None:
    """DNS rebinding: a web page whose name an attacker points at 127.0.0.1 reaches this
    listener from the victim's browser, with the attacker's name as Host. So only names
    that cannot be rebound are answered: localhost, IP literals (an IP as Host means the
    page was loaded from that address itself, and probes such as Kubernetes' use the pod
    IP), the bound address, and server.admin_allowed_hosts ("*": any)."""
    if "*" in server.admin_allowed_hosts:
        return None
    allowed = frozenset({"localhost", *server.admin_allowed_hosts})
    if server.admin is not None:
        allowed |= {_host_name(server.admin.host)}

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is None:  # HTTP/1.0 tools; a browser always sends Host
            return await handler(request)
        name = _host_name(host)
        if name in allowed or _is_ip(name):
            return await handler(request)
        return web.Response(
            status=421,
            text="misdirected request: this admin listener answers Host localhost, IP "
            "addresses and the names in server.admin_allowed_hosts\n",
        )

    return check


def _auth_middleware(token: str) -> Middleware:
    expected = token.encode()

    def ok(presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), expected)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and ok(presented.strip()):
            return await handler(request)
        if ok(request.cookies.get(COOKIE, "")):
            return await handler(request)
        if request.path == "/" and ok(request.query.get("token", "")):
            # a browser cannot send a header when opening a page: /?token=... sets a
            # cookie (the page's EventSource sends it too) and drops the token from the URL
            resp = web.Response(status=303, headers={"Location": "/"})
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            return resp
        return web.Response(
            status=401,
            text="unauthorized: send Authorization: Bearer <token>\n",
            headers={"WWW-Authenticate": 'Bearer realm="forkproxy admin"'},
        )

    return check


def admin_app(view: AdminView) -> web.Application:
    token = admin_token(view.server)
    _warn_if_exposed(view.server, token)
    sampler = Sampler(view)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(view.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if not view.ready():
            return web.Response(status=503, text="not ready\n")
        # up but unable to serve now (starts failing, nothing ready): a load balancer
        # should send its traffic elsewhere
        if (problem := view.serving().pool.serve_problem) is not None:
            return web.Response(status=503, text=f"not ready: {problem}\n")
        return web.Response(text="ready\n")

    async def instances(request: web.Request) -> web.Response:
        # every app's instances, each naming its app; ?app=NAME: that app's only. The
        # top-level keys are the first app's (what a single-app proxy always showed).
        apps = view.apps()
        only = request.query.get("app")
        if only is not None and only not in apps:
            return web.json_response({"error": f"no app {only!r}", "apps": list(apps)}, status=404)
        rows = []
        for name, serving in apps.items():
            if only is None or only == name:
                rows += [{**row, "app": name} for row in serving.pool.describe()]
        first = apps[only] if only is not None else next(iter(apps.values()))
        return web.json_response(
            {
                "backend": first.backend_type,
                "pool": first.pool_name,
                "owner": first.owner_id,
                "queued": sum(s.pool.queued for n, s in apps.items() if only in (None, n)),
                "spares": first.spares,
                "apps": list(apps),
                # below the instances: each app's template (up or given back), what starting
                # it and forking from it cost, measured; None for backends without one
                "ladder": {n: s.ladder for n, s in apps.items() if only in (None, n)},
                "instances": rows,
            }
        )

    async def page(_: web.Request) -> web.Response:
        return web.Response(
            text=(_PAGE / "index.html").read_text(encoding="utf-8"), content_type="text/html"
        )

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(
            text=(_PAGE / name).read_text(encoding="utf-8"), content_type=_STATIC[name]
        )

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        history = json.dumps(list(sampler.history))
        seq = 0
        try:
            await resp.write(f"event: history\ndata: {history}\n\n".encode())
            while (sample := await sampler.next(seq)) is not None:
                seq = sample["seq"]
                data = json.dumps(sample, default=str)  # a resolved setting may not be JSON
                await resp.write(f"event: sample\ndata: {data}\n\n".encode())
        except ConnectionResetError:  # the page or top went away
            pass
        return resp

    async def run_sampler(_: web.Application) -> AsyncIterator[None]:
        await sampler.start()
        yield
        await sampler.aclose()

    async def end_streams(_: web.Application) -> None:
        sampler.close()  # open pages must not hold the shutdown for aiohttp's grace period

    host_check = _host_middleware(view.server)
    middlewares = [m for m in (host_check, _auth_middleware(token) if token else None) if m]
    app = web.Application(middlewares=middlewares)
    app.cleanup_ctx.append(run_sampler)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/instances", instances)
    return app


_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 27\r\nConnection: close\r\n\r\ntoo many admin connections\n"
)


class _Busy(asyncio.Protocol):
    """A connection beyond server.admin_max_connections: a 503 and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_TOO_MANY)
        transport.close()


class _AdminSite(web.BaseSite):
    """aiohttp's TCPSite with a cap on open connections (aiohttp has none)."""

    def __init__(
        self,
        runner: web.AppRunner,
        address: Address | socket.socket,
        max_connections: int,
        on_reject: Callable[[], None],
    ) -> None:
        super().__init__(runner)
        self._address = address  # or a listening socket (systemd's, or SO_REUSEPORT)
        self._max_connections = max_connections
        self._on_reject = on_reject

    @property
    def name(self) -> str:
        at = self._address
        return f"http://{at}" if isinstance(at, Address) else f"http://{at.getsockname()}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        cap, on_reject = self._max_connections, self._on_reject

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= cap:
                on_reject()
                return _Busy()
            return server()

        loop = asyncio.get_running_loop()
        at = self._address
        if isinstance(at, Address):
            self._server = await loop.create_server(protocol, at.host, at.port, reuse_address=True)
        else:
            self._server = await loop.create_server(protocol, sock=at)


def admin_runner(view: AdminView) -> web.AppRunner:
    # aiohttp's keepalive_timeout also runs from the connection's start: a connection
    # that sends nothing, or half a request head, closes then too (its default is ~1 h)
    return web.AppRunner(
        admin_app(view),
        access_log=None,
        keepalive_timeout=view.server.admin_keepalive_timeout,
    )


def admin_site(
    view: AdminView, runner: web.AppRunner, address: Address | socket.socket
) -> web.BaseSite:
    rejected = view.metrics.rejected.labels("admin_max_connections")
    return _AdminSite(runner, address, view.server.admin_max_connections, rejected.inc)
