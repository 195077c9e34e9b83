"""Warm-up requests: GETs sent through the app inside the template, before it forks, so
every fork inherits what frameworks build lazily on the first request (Django's URL
resolver and compiled templates, Flask's and Starlette's routing caches, imports done
inside views). No socket and no server: a WSGI app is called with an environ, an ASGI
app driven with a scope, an aiohttp app's handler called with a request.

ASGI lifespan and aiohttp on_startup do NOT run here (they run in every fork): a page
that needs what they set up fails its warm-up, which is reported and skipped. A failed
warm-up never stops the template; it only leaves that page cold."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

HEADER = "X-Forkproxy-Warmup"  # lets an app tell (and skip side effects of) a warm-up
_TIMEOUT = 10.0  # per request: a warm-up that hangs must not hold the template forever
_THREAD_JOIN = 2.0  # threads a warm-up started (an ASGI thread pool) get this to exit


def _split(target: str) -> tuple[str, str, str]:
    """(host, path, query) of "/path?q" or "http://host/path?q"."""
    parts = urlsplit(target)
    return parts.netloc or "localhost", parts.path or "/", parts.query


def call_wsgi(app: Any, target: str) -> int:
    host, path, query = _split(target)
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": host.partition(":")[0],
        "SERVER_PORT": host.partition(":")[2] or "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": host,
        "HTTP_" + HEADER.upper().replace("-", "_"): "1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        status.append(line)
        return lambda _data: None

    body = app(environ, start_response)
    try:
        for _chunk in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()  # Django's request_finished: closes the DB connection it opened
    return int(status[-1].split(" ", 1)[0]) if status else 0


async def call_asgi(app: Any, target: str) -> int:
    host, path, query = _split(target)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(b"host", host.encode("latin-1")), (HEADER.lower().encode(), b"1")],
        "client": ("127.0.0.1", 0),
        "server": (host.partition(":")[0], int(host.partition(":")[2] or 80)),
        "state": {},
    }
    status = 0
    done = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return status


async def call_aiohttp(app: Any, target: str) -> int:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    host, path, query = _split(target)
    url = path + (f"?{query}" if query else "")
    app.freeze()  # routes and middleware chains built now; the template would anyway
    req = make_mocked_request("GET", url, headers={"Host": host, HEADER: "1"}, app=app)
    # _handle: routing + middlewares + the handler, without a server around them
    try:
        resp = await app._handle(req)
    except web.HTTPException as exc:  # raised, not returned: still an answer
        return int(exc.status)
    return int(resp.status)


def _run_async(kind: str, app: Any, targets: Iterable[str], report: Callable[..., None]) -> None:
    call = call_asgi if kind == "asgi" else call_aiohttp

    async def all_of_them() -> None:
        for target in targets:
            started = time.perf_counter()
            try:
                status = await asyncio.wait_for(call(app, target), _TIMEOUT)
            except Exception as exc:  # reported: the page stays cold
                report(target, None, exc, started)
            else:
                report(target, status, None, started)

    asyncio.run(all_of_them())


def run(kind: str, app: Any, targets: list[str], *, chosen: bool = True) -> list[str]:
    """Send each GET through `app` (an aiohttp Application, ASGI or WSGI callable) in
    process; return one line per request saying how it went (failures also go to
    stderr, where the template's output is the proxy's; a 4xx only for `chosen` paths:
    the default readiness path may well be a 404 of an app that has no page there)."""
    if not targets:
        return []
    lines: list[str] = []
    before = set(threading.enumerate())

    def report(target: str, status: int | None, exc: BaseException | None, t0: float) -> None:
        ms = (time.perf_counter() - t0) * 1000
        if exc is not None:
            outcome = f"failed ({type(exc).__name__}: {exc})"
        elif status is not None and status >= 500:
            outcome = f"answered {status}"
        else:
            outcome = f"{status}"
        lines.append(f"warm-up GET {target}: {outcome} in {ms:.1f} ms")
        # a page left cold, or (among paths the user chose) a mistyped one
        if status is None or status >= 500 or (chosen and status >= 400):
            print(f"forkproxy template: {lines[-1]}", file=sys.stderr)

    if kind == "wsgi":
        for target in targets:
            started = time.perf_counter()
            try:
                report(target, call_wsgi(app, target), None, started)
            except Exception as exc:  # reported: the page stays cold
                report(target, None, exc, started)
    else:
        _run_async(kind, app, targets, report)
    # An ASGI app's sync views ran on a worker pool told to stop when the loop ended.
    deadline = time.monotonic() + _THREAD_JOIN
    for thread in set(threading.enumerate()) - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    return lines


def run_spec(kind: str, app: Any, spec: dict[str, Any] | None) -> list[str]:
    """The template's call: ProcessConfig.warmup_spec() as sent in its start spec."""
    if not spec or (kind == "aiohttp" and not spec.get("configured")):
        return []  # aiohttp's own machinery is primed without running the app's code
    return run(kind, app, list(spec.get("paths", [])), chosen=bool(spec.get("configured")))
