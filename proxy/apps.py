"""The apps one proxy serves: `[apps.NAME]` tables, each with the hosts (and optionally
the path prefix) it answers and its own `[apps.NAME.pool]` and `[apps.NAME.backend]`.
A file without `[apps]` is one app, "default", answering every host with the file's
`[pool]` and `[backend]`.

The pool/backend readers are passed in by proxy/config.py (which imports this module),
so one parser reads a top-level and a per-app section alike."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from forkproxy.backends.support.table import Table
from forkproxy.proxy.routing import CATCH_ALL, Route

if TYPE_CHECKING:
    from forkproxy.proxy.config import Config, PoolConfig

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_HOST = re.compile(r"(\*\.)?[0-9a-z]([0-9a-z-]*[0-9a-z])?(\.[0-9a-z]([0-9a-z-]*[0-9a-z])?)*")


@dataclass(frozen=True)
class AppConfig:
    name: str
    hosts: tuple[str, ...]
    pool: PoolConfig
    backend_type: str
    backend: Any  # the backend module's own frozen config dataclass
    path_prefix: str = ""

    @property
    def route(self) -> Route:
        return Route(self.name, self.hosts, self.path_prefix)


def single(pool: PoolConfig, backend_type: str, backend: Any) -> AppConfig:
    """Today's file (`[pool]`, `[backend]`): one app answering every host."""
    return AppConfig(DEFAULT, (CATCH_ALL,), pool, backend_type, backend)


def is_single(apps: tuple[AppConfig, ...]) -> bool:
    """The form of a file without [apps]: one app named "default" on every host."""
    return len(apps) == 1 and apps[0].route == Route(DEFAULT, (CATCH_ALL,))


def pool_name(server_name: str, app: AppConfig, apps: int) -> str:
    """The label its instances carry (ownership, orphan reaping). The single app keeps
    the plain server.name, so instances of a proxy from before apps stay recognised."""
    if apps == 1 and app.name == DEFAULT:
        return server_name
    return f"{server_name}-{app.name}"


def app_config(cfg: Config, app: AppConfig) -> Config:
    """The config one app's generation runs: its pool and backend, its pool name."""
    name = pool_name(cfg.server.name, app, len(cfg.apps))
    return replace(
        cfg,
        pool=app.pool,
        backend_type=app.backend_type,
        backend=app.backend,
        server=replace(cfg.server, name=name),
        apps=(app,),
    )


def serves_everything(apps: tuple[AppConfig, ...], default_app: str) -> bool:
    """One app that every request goes to: the data path skips routing."""
    if len(apps) != 1:
        return False
    app = apps[0]
    return default_app == app.name or (CATCH_ALL in app.hosts and app.path_prefix in ("", "/"))


ReadPool = Callable[[Table], "PoolConfig"]
ReadBackend = Callable[[Table], tuple[str, Any]]


def _hosts(t: Table) -> tuple[str, ...]:
    if not t.has("hosts"):
        t.error("hosts", 'missing: the names this app answers, e.g. ["shop.example.com"]')
        return ()
    names = tuple(h.lower().rstrip(".") for h in t.str_list("hosts"))
    if not names and t.data.get("hosts") == []:
        t.error("hosts", 'empty: name at least one host, or "*" for every host')
    for h in names:
        if h != CATCH_ALL and not _HOST.fullmatch(h):
            t.error(
                "hosts",
                f'{h!r}: expected a host name without port ("shop.example.com"), '
                'a wildcard ("*.example.com") or "*"',
            )
    return names


def _one(t: Table, name: str, read_pool: ReadPool, read_backend: ReadBackend) -> AppConfig:
    hosts = _hosts(t)
    prefix = t.str("path_prefix", "")
    if prefix and not prefix.startswith("/"):
        t.error("path_prefix", f"{prefix!r} must start with '/'")
    pool = read_pool(t.sub("pool"))
    btype, backend = read_backend(t.sub("backend"))
    t.done()
    return AppConfig(name, hosts, pool, btype, backend, prefix)


def parse_apps(
    root: Table, read_pool: ReadPool, read_backend: ReadBackend
) -> tuple[tuple[AppConfig, ...], str]:
    """(apps, default_app) from the root table; the caller already knows `apps` is set."""
    at = root.sub("apps")
    apps: list[AppConfig] = []
    for name in at.data:
        t = at.sub(name)
        if not _NAME.fullmatch(name):
            at.error(name, "an app name uses letters, digits, '-' and '_' (it becomes a label)")
        apps.append(_one(t, name, read_pool, read_backend))
    if not apps:
        root.error("apps", "empty: add an [apps.NAME] table, or remove [apps]")
    _no_overlap(at, apps)
    default = root.str("default_app", "")
    if default and default not in {a.name for a in apps}:
        names = ", ".join(a.name for a in apps)
        root.error("default_app", f"{default!r} is not an app; the apps are: {names}")
    return tuple(apps), default


def _no_overlap(at: Table, apps: list[AppConfig]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for app in apps:
        for h in app.hosts:
            key = (h, app.path_prefix.rstrip("/"))
            if (other := seen.setdefault(key, app.name)) != app.name:
                where = f" with path_prefix {app.path_prefix!r}" if app.path_prefix else ""
                at.error(f"{app.name}.hosts", f"{h!r}{where} is served by app {other!r} already")
