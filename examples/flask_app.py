"""A small Flask app for fork mode's WSGI path (and for exec mode under gunicorn):
identity, a sleep, a body echo. `app` is the WSGI callable; `create_app` the factory.

    forkproxy run --config examples/flask.toml
    gunicorn examples.flask_app:app -b 127.0.0.1:8000     # the same app, exec mode
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, request

_MAX_MS = 60_000


def _instance() -> str:
    return os.environ.get("FORKPROXY_INSTANCE") or f"pid-{os.getpid()}"


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> Response:
        resp = Response(f"hello from flask instance {_instance()}\n", mimetype="text/plain")
        resp.headers["X-Instance-Id"] = _instance()
        resp.headers["X-Pid"] = str(os.getpid())
        return resp

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/delay")
    def delay() -> Response:
        # Blocks a worker thread, as a slow database call would.
        ms = max(0, min(request.args.get("ms", 0, type=int), _MAX_MS))
        time.sleep(ms / 1000)
        return Response(f"slept {ms}ms in {_instance()}\n", mimetype="text/plain")

    @app.post("/echo")
    def echo() -> Response:
        return Response(request.get_data(), mimetype="application/octet-stream")

    return app


app = create_app()
