"""What a reload (SIGHUP) changes, decided from the running and the re-read config alone:
which keys wait for a restart, whether a new generation (backend, pool, forwarder) must
start, or whether the pool's settings apply in place. Pure: no I/O, unit-tested directly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from forkproxy.proxy.config import Config

# Held by what outlives a reload: the listening sockets, the admin app and its token,
# the pool name every instance is labelled with.
RESTART_KEYS = (
    "listen",
    "admin",
    "name",
    "admin_token_env",
    "admin_token_file",
    "admin_allowed_hosts",
    "admin_keepalive_timeout",
    "admin_max_connections",
    "reuse_port",
)
# Read by the proxy itself on each use (connection, request, shutdown): applied at once.
PROXY_KEYS = ("limits", "access_log", "drain_delay", "shutdown_timeout")
# Pool keys a generation is built with (the backend's context, the orphan reaper's period).
BUILT_POOL_KEYS = ("readiness_path", "start_timeout", "orphan_timeout")


@dataclass(frozen=True)
class Plan:
    cfg: Config  # what runs after the reload: the new config, restart-only keys kept
    rebuild: str  # why a new generation starts; "": none does
    pool_changed: bool  # the pool's settings differ (applied in place when no rebuild)
    needs_restart: tuple[str, ...]  # key paths whose change is ignored until a restart


def _changed(old: object, new: object) -> list[str]:
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)  # type: ignore[call-overload]
    return [k for k in a if a[k] != b.get(k)]


def fork_mode(cfg: Config) -> bool:
    return cfg.backend_type == "process" and getattr(cfg.backend, "mode", "") == "fork"


def plan(old: Config, new: Config) -> Plan:
    server_changes = _changed(old.server, new.server)
    restart = tuple(f"server.{k}" for k in server_changes if k in RESTART_KEYS)
    kept = {k: getattr(old.server, k) for k in RESTART_KEYS}
    cfg = replace(new, server=replace(new.server, **kept))
    forwarding = [k for k in server_changes if k not in RESTART_KEYS and k not in PROXY_KEYS]
    pool_changes = _changed(old.pool, new.pool)
    rebuild = ""
    if old.backend_type != new.backend_type or old.backend != new.backend:
        rebuild = "the backend section changed"
    elif fork_mode(new):
        rebuild = "fork mode: a new template imports the app again"
    elif built := [k for k in pool_changes if k in BUILT_POOL_KEYS]:
        rebuild = f"pool.{built[0]} changed"
    elif forwarding:
        rebuild = f"server.{forwarding[0]} changed"
    return Plan(cfg=cfg, rebuild=rebuild, pool_changed=bool(pool_changes), needs_restart=restart)
