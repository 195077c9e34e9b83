"""Test apps for fork mode's WSGI path: PRNG state per fork, a post_fork hook that
records where it ran, and callables whose kind auto-detection must get right."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify

# The app's own generator, seeded at import: every fork inherits this exact state,
# unless post_fork reseeds it (CPython reseeds only the module-level `random`).
OWN_RNG = random.Random(1234)
REINIT_IN = 0  # pid of the process post_fork ran in


def reseed(app: Flask) -> None:
    global REINIT_IN
    REINIT_IN = os.getpid()
    OWN_RNG.seed()
    record = os.environ.get("WSGI_TEST_POST_FORK_LOG")
    if record:
        with open(record, "a") as f:
            f.write(f"{os.getpid()} {app.name}\n")


def create_app() -> Flask:
    app = Flask("wsgi_apps")

    @app.get("/rand")
    def rand() -> Any:
        return jsonify(
            pid=os.getpid(),
            module_random=random.random(),
            own_random=OWN_RNG.random(),
            reinit_in=REINIT_IN,
        )

    return app


flask_app = create_app()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def plain_wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """No framework: what auto must recognise by its (environ, start_response) signature."""
    body = json.dumps(
        {"path": environ["PATH_INFO"], "xff": environ.get("HTTP_X_FORWARDED_FOR")}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class AsgiClass:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError  # only detected, never served


asgi_instance = AsgiClass()


class OneArg:
    def __call__(self, thing: Any) -> None:
        raise NotImplementedError


one_arg = OneArg()


def post_fork_that_fails() -> None:
    raise RuntimeError("post_fork refuses")
