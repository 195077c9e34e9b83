"""nginx as the reference reverse proxy: a generated config in a temp dir, one worker,
`proxy_pass` to an upstream with keepalive (what a tuned production nginx would do)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def write_conf(directory: Path, port: int, upstream: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # As root nginx would drop its worker to "nobody", which cannot enter our 0700 temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(_CONF.format(user=user, dir=directory, port=port, upstream=upstream))
    return conf


def nginx_argv(binary: str, conf: Path) -> list[str]:
    return [binary, "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.parent / "error.log")]
