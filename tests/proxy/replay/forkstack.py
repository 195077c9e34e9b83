"""Fork mode's serving stack as a plain process, so a tee can sit in front of it:
`python -m tests.proxy.replay.forkstack PORT KIND APP`. It loads and prepares the app as
the fork-mode template does (apps.load, then uvicorn's config / waitress's / a frozen
aiohttp app) and serves it with the code a fork runs (_serve.run_child) on a socket it
listens on itself; only the template and the fork around it are left out."""

from __future__ import annotations

import os
import socket
import sys

from forkproxy.backends.process import _serve, _wsgi
from forkproxy.backends.process.child import apps

GRACE = 2.0


def main(port: int, kind: str, target: str) -> None:
    kind, app = apps.load(target, kind)
    if kind == "asgi":
        app = _serve.asgi_config(app, GRACE)
    elif kind == "wsgi":
        app = _wsgi.prepare(app, 4)
    else:
        app.freeze()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    _serve.run_child(kind, app, _serve.socket_now(sock.detach()), GRACE, os.getppid(), spare=False)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
