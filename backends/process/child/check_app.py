"""What check-config runs in a throw-away interpreter: build the app as the template
would (load, warmup hook, no threads left behind) and look for what will not serve.
Prints "warning: ..." lines, and on failure the exception's last line (exit 1)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import traceback
from collections.abc import Iterator
from typing import Any

from forkproxy.backends.process.child import apps
from forkproxy.backends.process.child import warmup as _warmup

# uvicorn serves websockets with either; without one every websocket route answers 404
_WS_LIBRARIES = ("websockets", "wsproto")
_WS_ROUTE_TYPES = {"WebSocketRoute", "APIWebSocketRoute"}  # Starlette, FastAPI


def _routes(app: Any, depth: int = 0) -> Iterator[Any]:
    """Starlette/FastAPI routes, through Mounts and Routers (a FastAPI app keeps them on
    `.router.routes`; middleware wrappers hide them, which is then no finding)."""
    if depth > 8:
        return
    routes = getattr(app, "routes", None)
    if routes is None and getattr(app, "router", None) is not None:
        routes = getattr(app.router, "routes", None)
    for route in routes or ():
        yield route
        inner = getattr(route, "app", None) if type(route).__name__ == "Mount" else None
        if inner is not None:
            yield from _routes(inner, depth + 1)


def websocket_warning(app: Any) -> str | None:
    if any(importlib.util.find_spec(name) is not None for name in _WS_LIBRARIES):
        return None
    paths = [getattr(r, "path", "?") for r in _routes(app) if type(r).__name__ in _WS_ROUTE_TYPES]
    if not paths:
        return None
    return (
        f"websocket routes ({', '.join(paths)}) but no websocket library: uvicorn answers "
        "them 404; pip install 'forkproxy[asgi]' (or websockets)"
    )


def _warm_ok(line: str) -> bool:
    return re.search(r": [123]\d\d in [\d.]+ ms$", line) is not None


def main(target: str, kind: str, warmup: str, requests: list[str] | None = None) -> int:
    """`requests`: the warm-up paths the user chose, sent as the template sends them (a
    failed one is a warning: the template serves without it)."""
    try:
        seen, app = apps.load(target, kind)
        if warmup:
            apps.call_hook(warmup, app)
        with contextlib.redirect_stderr(io.StringIO()):  # said once, below, as warnings
            lines = _warmup.run(seen, app, requests or [])
        for line in lines:
            if not _warm_ok(line):
                print(f"warning: {line}")
        apps.refuse_threads(seen)
        if seen == "asgi" and (warning := websocket_warning(app)):
            print(f"warning: {warning}")
    except BaseException as exc:
        print(traceback.format_exception_only(type(exc), exc)[-1].strip())
        return 1
    return 0
