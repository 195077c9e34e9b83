"""`forkproxy check-config` beyond parsing: what can be checked before traffic arrives
(listen/admin ports free, and the backend's own checks: the app builds, the command is on
PATH, the image is on the engine). Every problem comes with its key path."""

from __future__ import annotations

import socket
from dataclasses import replace

from forkproxy import backends
from forkproxy.backends.support.table import Problem
from forkproxy.proxy.apps import is_single
from forkproxy.proxy.config import Address, Config


def port_problem(key: str, address: Address, *, reuse_port: bool = False) -> Problem | None:
    """`reuse_port`: a port held by SO_REUSEPORT listeners of this user (a proxy handing
    over to its successor) counts as free."""
    if address.port == 0:
        return None  # any free port: nothing to take
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # as the proxy binds: a port in TIME_WAIT is free, one with a listener is not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((address.host, address.port))
    except OSError as exc:
        return Problem(key, f"{address}: {(exc.strerror or str(exc)).lower()}")
    return None


def check(cfg: Config, *, imports: bool = True, ports: bool = True) -> list[Problem]:
    found = [port_problem("server.listen", cfg.server.listen)] if ports else []
    if cfg.server.admin is not None and ports:
        found.append(port_problem("server.admin", cfg.server.admin))
    problems = [p for p in found if p is not None]
    single = is_single(cfg.apps)
    for app in cfg.apps:
        backend_check = getattr(backends.load(app.backend_type), "check_config", None)
        if backend_check is None:
            continue
        for p in backend_check(app.backend, imports=imports):
            # a backend names its own keys "backend.KEY"; each app's sit under its table
            problems.append(p if single else replace(p, path=f"apps.{app.name}.{p.path}"))
    return problems
