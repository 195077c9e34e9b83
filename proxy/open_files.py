"""Open files: the soft RLIMIT_NOFILE raised to the hard limit at start, and
server.max_connections kept below what the limit leaves once everything else the proxy
holds is counted. Without it, 1,100 idle connections under the usual 1,024 soft limit
made accept(), instance starts and upstream connects fail with EMFILE."""

from __future__ import annotations

import dataclasses
import logging
import resource

from forkproxy.backends.support import nofile
from forkproxy.proxy.config import Config

log = logging.getLogger("forkproxy")

# What the proxy holds besides client connections, as file descriptors:
# - BASE: stdio, the event loop (epoll, its self-pipe, signal wake-up), the two listening
#   sockets, log files, the backend's own client (docker/vSphere API connections), the
#   fork template's pipes, connections beyond max_connections between accept and close.
# - per instance: PER_INSTANCE (an exec'd process: its stderr pipe and the child's
#   handle) plus one upstream connection per request it takes at once (max_concurrency):
#   a request holds its upstream connection only while it holds a slot, so upstream
#   connections never outnumber max_instances * max_concurrency, whatever the clients do.
# - per start in flight (max_starting): PER_START (exec pipes, the readiness probe).
# - the admin listener: admin_max_connections.
# At the defaults (20 instances x 10, 4 starting, 64 admin) that is
# 64 + 20 * (4 + 10) + 4 * 4 + 64 = 424: a 1,024 soft limit leaves 600 client connections.
BASE = 64
PER_INSTANCE = 4
PER_START = 4


def raise_soft_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one (nginx worker_rlimit_nofile, systemd's
    advice for servers); returns (soft, hard) as they are now. For the proxy alone: the
    processes the backends start get the limit it started with (support/nofile.py)."""
    nofile.remember()  # what the backends give the processes they start (the first one)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # macOS: an unlimited hard limit is refused
            log.debug("RLIMIT_NOFILE stays %d: %s", soft, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def reserve(cfg: Config) -> int:
    """File descriptors kept for everything but client connections (see above)."""
    pool, server = cfg.pool, cfg.server
    admin = server.admin_max_connections if server.admin is not None else 0
    instances = pool.max_instances * (PER_INSTANCE + pool.max_concurrency)
    return BASE + instances + pool.max_starting * PER_START + admin


def fit(cfg: Config, soft: int) -> Config:
    """cfg with server.max_connections lowered to what `soft` open files allow, logged."""
    if soft == resource.RLIM_INFINITY:
        return cfg
    limits = cfg.server.limits
    kept = reserve(cfg)
    allowed = soft - kept
    if limits.max_connections <= allowed:
        return cfg
    use = max(allowed, 1)
    log.warning(
        "server.max_connections %d > what RLIMIT_NOFILE %d allows: using %d (%d kept for "
        "instances, their upstream connections, starts and the admin listener)%s",
        limits.max_connections,
        soft,
        use,
        kept,
        "; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)" if allowed < 1 else "",
    )
    server = dataclasses.replace(
        cfg.server, limits=dataclasses.replace(limits, max_connections=use)
    )
    return dataclasses.replace(cfg, server=server)


def prepare(cfg: Config) -> Config:
    """At start: the limit raised, max_connections fitted under it."""
    soft, _ = raise_soft_limit()
    return fit(cfg, soft)
