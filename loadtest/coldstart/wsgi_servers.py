"""Which WSGI server a fork-mode instance embeds: waitress vs a2wsgi under uvicorn,
both serving a one-route Flask app from a warm parent exactly as the fork template does
(app imported and server loaded before the fork, the child handed a listening socket).

    .venv/bin/python -m forkproxy.loadtest.coldstart.wsgi_servers --n 40 --seconds 5

Cold start: fork() -> first response byte of GET / (the client is already connected,
as through the proxy). Throughput: wrk -t1 -c16 against one child with 4 threads.
Self-contained on purpose (no other loadtest module), needs waitress, a2wsgi, uvicorn, wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

THREADS = 4


def _waitress(app: Any) -> Callable[[socket.socket], None]:
    import logging

    import waitress.server

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" per request

    def serve(sock: socket.socket) -> None:
        server = waitress.server.create_server(
            app, sockets=[sock], threads=THREADS, clear_untrusted_proxy_headers=True
        )
        server.run()

    return serve


def _a2wsgi_uvicorn(app: Any) -> Callable[[socket.socket], None]:
    import asyncio

    import uvicorn
    import uvloop
    from a2wsgi import WSGIMiddleware

    config = uvicorn.Config(
        WSGIMiddleware(app, workers=THREADS),
        loop="none",
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    config.load()

    def serve(sock: socket.socket) -> None:
        sock.setblocking(False)
        uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))

    del asyncio
    return serve


def _flask_app() -> Any:
    from flask import Flask

    app = Flask(__name__)
    app.add_url_rule("/", "index", lambda: "hello\n")
    return app


CANDIDATES = {"waitress": _waitress, "a2wsgi+uvicorn": _a2wsgi_uvicorn}


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _fork(serve: Callable[[socket.socket], None], sock: socket.socket) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            serve(sock)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def cold(serve: Callable[[socket.socket], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        sock = _listen()
        client = socket.create_connection(sock.getsockname(), timeout=10)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        t0 = time.perf_counter()
        pid = _fork(serve, sock)
        first = client.recv(1)
        out.append(time.perf_counter() - t0)
        assert first == b"H", first
        client.close()
        sock.close()
        _kill(pid)
        time.sleep(0.05)
    return out


def throughput(serve: Callable[[socket.socket], None], seconds: int) -> float:
    sock = _listen()
    pid = _fork(serve, sock)
    port = sock.getsockname()[1]
    try:
        out = subprocess.run(
            ["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        sock.close()
        _kill(pid)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args(argv)
    app = _flask_app()

    results: dict[str, dict[str, float]] = {}
    for name, make in CANDIDATES.items():
        serve = make(app)
        samples = sorted(cold(serve, args.n))
        results[name] = {
            "cold_p50_ms": statistics.median(samples) * 1000,
            "cold_p90_ms": samples[int(0.9 * (len(samples) - 1))] * 1000,
            "rps": throughput(serve, args.seconds),
        }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
