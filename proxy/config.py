"""The config file: one TOML file parsed into frozen dataclasses in one validating pass
that reports every problem with its key path and allowed values."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from forkproxy import backends
from forkproxy.backends.support.table import ConfigError, Problem, Table
from forkproxy.proxy import apps as apps_mod
from forkproxy.proxy.apps import AppConfig
from forkproxy.proxy.budget import BudgetConfig
from forkproxy.proxy.http.headers import DROP_CLIENT_HEADERS
from forkproxy.proxy.http.limits import Limits


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(value: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'{value!r} is not "HOST:PORT" with a port from 0 to 65535')
    return Address(host.strip("[]") or "0.0.0.0", int(port))


@dataclass(frozen=True)
class ServerConfig:
    listen: Address = Address("127.0.0.1", 8080)
    admin: Address | None = Address("127.0.0.1", 9090)
    name: str = "forkproxy"
    shutdown_timeout: float = 30.0
    drain_delay: float = 0.0  # SIGTERM: /readyz is 503 this long before the listener closes
    server_timing: bool = True
    access_log: bool = False
    upstream_connect_timeout: float = 5.0
    upstream_header_timeout: float = 60.0
    retry_attempts: int = 2  # extra tries on another instance when nothing was sent yet
    # a websocket tunnel with no byte either way for this long is closed (nginx's
    # proxy_read_timeout applies to upgraded connections, 60s)
    tunnel_idle_timeout: float = 60.0
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    limits: Limits = field(default_factory=Limits)
    admin_token_env: str = ""  # env var holding the admin bearer token (never the token itself)
    admin_token_file: str = ""  # or a file holding it
    # issue 21, what untrusted clients may send and the admin listener's edges:
    # client-address headers dropped from peers outside trusted_proxies
    drop_client_headers: tuple[str, ...] = DROP_CLIENT_HEADERS
    underscores_in_headers: bool = False  # nginx's default: names with "_" are dropped
    # Host names the admin listener answers besides localhost and IP literals ("*": any)
    admin_allowed_hosts: tuple[str, ...] = ()
    admin_keepalive_timeout: float = 30.0  # idle (or no request yet) admin connections close
    admin_max_connections: int = 64  # beyond: 503 and close
    # SO_REUSEPORT on both listeners: the next proxy binds them while this one drains
    reuse_port: bool = False


ROUTINGS = ("least_loaded", "pack")


@dataclass(frozen=True)
class PoolConfig:
    max_concurrency: int = 10
    target_concurrency: float | None = None  # None: "auto" (see forkproxy.proxy.policy.target)
    max_queue: int = 1000
    hold_timeout: float = 30.0
    idle_ttl: float | None = None  # None: "auto", priced by the measured start cost
    min_instances: int = 0
    max_instances: int = 20
    max_starting: int = 4
    warm_pool: int = 0
    max_requests_per_instance: int = 0
    max_memory: int = 0  # bytes an instance may hold (PSS) before it is retired; 0: no limit
    start_timeout: float = 30.0
    start_retries: int = 3
    readiness_path: str = "/"
    tick: float = 0.1
    routing: str = "pack"
    orphan_timeout: float = 60.0  # a stopped replica's instances are reaped within this
    # max_concurrency = "auto" (the file's default): the backend's concurrency_hint()
    # replaces it once prepared (a WSGI app's threads); target "auto" (None) follows it,
    # an explicit target is kept but never above it.
    concurrency_auto: bool = False

    def with_concurrency_hint(self, hint: int | None) -> PoolConfig:
        if not self.concurrency_auto:
            return self
        max_c = hint or self.max_concurrency
        target = self.target_concurrency
        return replace(
            self,
            max_concurrency=max_c,
            target_concurrency=None if target is None else min(target, max_c),
        )


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    pool: PoolConfig
    backend_type: str
    backend: Any  # the backend module's own frozen config dataclass
    source: str = "<defaults>"
    # every app the proxy serves; a file without [apps] is one, "default", every host.
    # pool/backend above are the first app's (what single-app readers see).
    apps: tuple[AppConfig, ...] = ()
    default_app: str = ""  # where a request no app's hosts match goes; "": 404
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        # the single app follows pool/backend, so replace(cfg, backend=...) means the same
        # as before apps existed (tests, the command line's overrides)
        if not self.apps or apps_mod.is_single(self.apps):
            single = apps_mod.single(self.pool, self.backend_type, self.backend)
            object.__setattr__(self, "apps", (single,))


def _address(t: Table, key: str, default: Address | None, *, optional: bool = False) -> Any:
    if not t.has(key):
        t.str(key)  # mark as seen
        return default
    before = len(t.problems)
    raw = t.str(key)
    if len(t.problems) > before:  # not a string (`listen = 8080`): one problem, said clearly
        got = t.data[key]
        port = got if isinstance(got, int) and not isinstance(got, bool) else 8080
        hint = f'expected "HOST:PORT" in quotes, e.g. "127.0.0.1:{port}", got {got!r}'
        t.problems[-1] = replace(t.problems[-1], message=hint)
        return default
    if optional and raw in ("", "off", "none"):
        return None
    try:
        return parse_address(raw)
    except ValueError as exc:
        t.error(key, str(exc))
        return default


def _networks(t: Table, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    out = []
    for raw in t.str_list(key):
        try:
            out.append(ipaddress.ip_network(raw, strict=False))
        except ValueError:
            t.error(key, f'{raw!r} is not an address or CIDR (e.g. "10.0.0.0/8")')
    return tuple(out)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOSTNAME = re.compile(r"[0-9a-z.-]+")


def _header_names(t: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(n.lower() for n in t.str_list(key, list(default)))
    for name in names:
        if not _TOKEN.fullmatch(name):
            t.error(key, f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
        elif name == "host":
            t.error(key, "'host' cannot be dropped: the instance needs it")
    return names


def _host_names(t: Table, key: str) -> tuple[str, ...]:
    names = tuple(n.lower().rstrip(".") for n in t.str_list(key))
    for name in names:
        if name != "*" and not _HOSTNAME.fullmatch(name):
            t.error(
                key, f'{name!r}: expected a host name without port (e.g. "admin.internal") or "*"'
            )
    return names


def _limits(t: Table) -> Limits:
    d = Limits()
    return Limits(
        # Below these no ordinary request gets through (every one would be a 414/431).
        max_url=t.size("max_url_size", d.max_url, min=256),
        max_header_bytes=t.size("max_header_size", d.max_header_bytes, min=1024),
        max_headers=t.int("max_headers", d.max_headers, min=1),
        max_body=t.size("max_body_size", d.max_body),
        header_timeout=t.duration("header_timeout", d.header_timeout, min=0.001),
        keepalive_timeout=t.duration("keepalive_timeout", d.keepalive_timeout),  # 0: off
        body_timeout=t.duration("body_timeout", d.body_timeout, min=0.001),
        body_min_rate=t.size("body_min_rate", d.body_min_rate),
        send_timeout=t.duration("send_timeout", d.send_timeout, min=0.001),
        max_connections=t.int("max_connections", d.max_connections, min=1),
        max_pipelined=t.int("max_pipelined_requests", d.max_pipelined, min=1, max=1024),
        max_chunk_ext=t.size("max_chunk_extensions_size", d.max_chunk_ext),
        body_buffer=t.size("body_buffer_size", d.body_buffer),
        max_buffered=t.size("body_buffer_total", d.max_buffered),
        body_spool=t.size("body_spool_size", d.body_spool),
        max_spooled=t.size("body_spool_total", d.max_spooled),
        min_chunk_avg=t.size("min_average_chunk_size", d.min_chunk_avg),
    )


def _server(t: Table) -> ServerConfig:
    d = ServerConfig()
    cfg = ServerConfig(
        listen=_address(t, "listen", d.listen),
        admin=_address(t, "admin", d.admin, optional=True),
        name=t.str("name", d.name),
        shutdown_timeout=t.duration("shutdown_timeout", d.shutdown_timeout),
        drain_delay=t.duration("drain_delay", d.drain_delay),
        server_timing=t.bool("server_timing", d.server_timing),
        access_log=t.bool("access_log", d.access_log),
        upstream_connect_timeout=t.duration(
            "upstream_connect_timeout", d.upstream_connect_timeout, min=0.001
        ),
        upstream_header_timeout=t.duration(
            "upstream_header_timeout", d.upstream_header_timeout, min=0.001
        ),
        retry_attempts=t.int("retry_attempts", d.retry_attempts, min=0, max=10),
        tunnel_idle_timeout=t.duration("tunnel_idle_timeout", d.tunnel_idle_timeout, min=0.001),
        trusted_proxies=_networks(t, "trusted_proxies"),
        limits=_limits(t),
        admin_token_env=t.str("admin_token_env", ""),
        admin_token_file=t.str("admin_token_file", ""),
        drop_client_headers=_header_names(t, "drop_client_headers", d.drop_client_headers),
        underscores_in_headers=t.bool("underscores_in_headers", d.underscores_in_headers),
        admin_allowed_hosts=_host_names(t, "admin_allowed_hosts"),
        admin_keepalive_timeout=t.duration(
            "admin_keepalive_timeout", d.admin_keepalive_timeout, min=0.1
        ),
        admin_max_connections=t.int("admin_max_connections", d.admin_max_connections, min=1),
        reuse_port=t.bool("reuse_port", d.reuse_port),
    )
    if cfg.admin_token_env and cfg.admin_token_file:
        t.error("admin_token_file", "set admin_token_env or admin_token_file, not both")
    if not cfg.name.replace("-", "").replace("_", "").isalnum():
        t.error("name", f"{cfg.name!r}: use letters, digits, '-' and '_' (it becomes a label)")
    t.done()
    return cfg


def _auto(t: Table, key: str, read: Callable[[], float]) -> float | None:
    """`key = "auto"` (or absent) gives None: the pool prices it from what it measures.
    Otherwise `read()` parses the number; its error also names "auto" as allowed."""
    if t.data.get(key, "auto") == "auto":
        t.str(key)  # mark as seen
        return None
    before = len(t.problems)
    value = read()
    if len(t.problems) > before:
        p = t.problems[-1]
        t.problems[-1] = replace(p, message=f'{p.message} (or "auto")')
        return None
    return value


def _pool(t: Table) -> PoolConfig:
    d = PoolConfig()
    raw_max = t.data.get("max_concurrency", "auto")
    auto = raw_max == "auto"
    if isinstance(raw_max, str):
        t.str("max_concurrency")  # seen
        if not auto:
            t.error("max_concurrency", f'expected an integer or "auto", got {raw_max!r}')
        max_c = d.max_concurrency
    else:
        max_c = t.int("max_concurrency", d.max_concurrency, min=1)
    cfg = PoolConfig(
        max_concurrency=max_c,
        concurrency_auto=auto,
        target_concurrency=_auto(
            t, "target_concurrency", lambda: t.float("target_concurrency", 1.0, min=0.1)
        ),
        max_queue=t.int("max_queue", d.max_queue, min=0),
        hold_timeout=t.duration("hold_timeout", d.hold_timeout, min=0.001),
        idle_ttl=_auto(t, "idle_ttl", lambda: t.duration("idle_ttl", 0.0)),
        min_instances=t.int("min_instances", d.min_instances, min=0),
        max_instances=t.int("max_instances", d.max_instances, min=1),
        max_starting=t.int("max_starting", d.max_starting, min=1),
        warm_pool=t.int("warm_pool", d.warm_pool, min=0),
        max_requests_per_instance=t.int(
            "max_requests_per_instance", d.max_requests_per_instance, min=0
        ),
        max_memory=t.size("max_memory", d.max_memory),
        start_timeout=t.duration("start_timeout", d.start_timeout, min=0.01),
        start_retries=t.int("start_retries", d.start_retries, min=1),
        readiness_path=t.str("readiness_path", d.readiness_path),
        tick=t.duration("tick", d.tick, min=0.01),
        routing=t.choice("routing", ROUTINGS, d.routing),
        orphan_timeout=t.duration("orphan_timeout", d.orphan_timeout, min=1.0),
    )
    target = cfg.target_concurrency
    if target is not None and target > cfg.max_concurrency and not auto:
        t.error(
            "target_concurrency",
            f"{cfg.target_concurrency} exceeds max_concurrency {cfg.max_concurrency}",
        )
    if cfg.min_instances > cfg.max_instances:
        t.error("min_instances", f"{cfg.min_instances} exceeds max_instances {cfg.max_instances}")
    if cfg.min_instances + cfg.warm_pool > cfg.max_instances:
        t.error("warm_pool", "min_instances + warm_pool exceeds max_instances")
    if not cfg.readiness_path.startswith("/"):
        t.error("readiness_path", f"{cfg.readiness_path!r} must start with '/'")
    t.done()
    return cfg


def _backend(bt: Table, *, from_file: bool) -> tuple[str, Any]:
    before = len(bt.problems)
    btype = bt.choice("type", sorted(backends.BACKENDS), "process")
    backend_cfg: Any = None
    if len(bt.problems) == before:  # a bad type: its keys cannot be judged
        try:
            module = backends.load(btype)
        except ImportError as exc:
            bt.error("type", f"backend {btype!r} cannot be loaded: {exc}")
        else:
            backend_cfg = module.parse_config(bt)
    if from_file and _forgot_app(btype, bt):
        bt.error(
            "app",
            'missing: name your app, e.g. app = "myproject.wsgi:application" (Django), '
            '"app:app" (Flask, FastAPI), or "forkproxy.backends.process.demo:create_app" '
            "for the demo",
        )
    return btype, backend_cfg


BUDGET_MIN_MEMORY = 16 * 1024**2  # below this no instance fits: a unit left out


def _budget(t: Table) -> BudgetConfig:
    cfg = BudgetConfig(
        max_instances=t.int("max_instances", 0, min=0),
        max_memory=t.size("max_memory", 0),
    )
    if 0 < cfg.max_memory < BUDGET_MIN_MEMORY:
        t.error(
            "max_memory",
            f"{cfg.max_memory} bytes holds no instance: a size with its unit "
            '("512m", "4g"), at least 16m, or 0 for no cap',
        )
    t.done()
    return cfg


def parse(data: dict[str, Any], source: str = "<config>", *, from_file: bool = False) -> Config:
    """`from_file`: the data is the user's config file, whose [backend] tables, if any,
    must name their app in fork mode (without one the bundled demo is served)."""
    root = Table.root(data)
    server = _server(root.sub("server"))
    budget = _budget(root.sub("budget"))
    default_app = ""
    if root.has("apps"):
        for section in ("pool", "backend"):
            if root.has(section):
                root.sub(section)  # seen: one problem, not also "unknown key"
                root.error(section, f"with [apps], each app has its own [apps.NAME.{section}]")
        apps, default_app = apps_mod.parse_apps(
            root, _pool, lambda bt: _backend(bt, from_file=from_file)
        )
    else:
        pool = _pool(root.sub("pool"))
        btype, backend_cfg = _backend(root.sub("backend"), from_file=from_file)
        apps = (apps_mod.single(pool, btype, backend_cfg),)
    floors = sum(a.pool.min_instances for a in apps)
    if budget.max_instances and floors > budget.max_instances:
        root.error(
            "budget.max_instances",
            f"{budget.max_instances} is below the apps' min_instances together ({floors})",
        )
    root.done()
    if root.problems:
        raise ConfigError(root.problems)
    first = apps[0]
    return Config(
        server=server,
        pool=first.pool,
        backend_type=first.backend_type,
        backend=first.backend,
        source=source,
        apps=apps,
        default_app=default_app,
        budget=budget,
    )


def _forgot_app(btype: str, bt: Table) -> bool:
    # Fork mode falls back to the bundled demo: in a file's [backend] table that is a
    # forgotten key serving the wrong app behind a healthy-looking proxy. A file with no
    # [backend] table tunes the proxy in front of the demo; a mistyped mode is reported
    # on its own, not as a missing app.
    if btype != "process" or not bt.data or bt.has("app"):
        return False
    return bool(bt.data.get("mode", "fork") == "fork")


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([Problem(str(p), f"cannot read: {exc.strerror}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(p), f"not valid TOML: {exc}")]) from exc
    return _cwd_from_file(parse(data, str(p), from_file=True), data, p)


def _cwd_from_file(cfg: Config, data: dict[str, Any], path: Path) -> Config:
    """A relative `backend.cwd` is read against the file's directory, so the config
    means the same from wherever `forkproxy` runs (a systemd unit, another shell)."""

    def anchored(backend: Any, table: Any) -> Any:
        cwd = table.get("backend", {}).get("cwd") if isinstance(table, dict) else None
        if not isinstance(cwd, str) or Path(cwd).is_absolute() or not hasattr(backend, "cwd"):
            return backend
        return replace(backend, cwd=str((path.parent / cwd).resolve()))

    tables = data.get("apps")
    if not isinstance(tables, dict):  # the single app: the file's own [backend]
        app = cfg.apps[0]
        apps: tuple[AppConfig, ...] = (replace(app, backend=anchored(app.backend, data)),)
    else:
        apps = tuple(replace(a, backend=anchored(a.backend, tables.get(a.name))) for a in cfg.apps)
    return replace(cfg, backend=apps[0].backend, apps=apps)


def with_overrides(cfg: Config, *, listen: str | None = None, admin: str | None = None) -> Config:
    problems: list[Problem] = []
    server = cfg.server
    for key, value in (("listen", listen), ("admin", admin)):
        if value is None:
            continue
        try:
            addr = None if key == "admin" and value in ("off", "none") else parse_address(value)
        except ValueError as exc:
            problems.append(Problem(f"--{key}", str(exc)))
            continue
        server = replace(server, listen=addr) if key == "listen" and addr else server
        if key == "admin":
            server = replace(server, admin=addr)
    if problems:
        raise ConfigError(problems)
    return replace(cfg, server=server)
