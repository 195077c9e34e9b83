"""HAProxy as a peer in the data-path bench: a generated config in a temp dir, one thread,
HTTP mode with upstream connection reuse (`http-reuse always`), as a tuned setup would run it."""

from __future__ import annotations

import shutil
from pathlib import Path

_CONF = """\
global
    nbthread 1
    maxconn 8192
    pidfile {dir}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    default_backend app

backend app
    server app 127.0.0.1:{upstream} maxconn 1024
"""


def haproxy_path() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


def write_conf(directory: Path, port: int, upstream: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "haproxy.cfg"
    conf.write_text(_CONF.format(dir=directory, port=port, upstream=upstream))
    return conf


def haproxy_argv(binary: str, conf: Path) -> list[str]:
    # -db: stay in the foreground, no daemon (the bench owns the process and its group).
    return [binary, "-f", str(conf), "-db"]
