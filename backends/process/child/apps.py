"""Resolve "module:attr" into a servable app inside the template: an aiohttp
Application (built once, before any fork), an ASGI callable or a WSGI callable.

WSGI and ASGI apps are both plain callables, so `auto` tells them apart by what they
are (known framework classes) or by how they are called: an async `__call__` or three
positional parameters (scope, receive, send) is ASGI, two (environ, start_response) is
WSGI. Anything else is refused with a hint to set app_kind: serving a WSGI app as ASGI
answers every request with a 500."""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web


class AppLoadError(Exception):
    pass


def resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for part in attr.strip().split("."):
        obj = getattr(obj, part)
    return obj


def _is_factory(obj: Any) -> bool:
    """A callable that needs no argument: a factory. An ASGI app needs (scope, receive, send)."""
    if isinstance(obj, type):
        return True
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return not required


# (module, class, kind): looked up only if the module is already imported by the app.
_KNOWN = (
    ("flask.app", "Flask", "wsgi"),
    ("django.core.handlers.wsgi", "WSGIHandler", "wsgi"),
    ("django.core.handlers.asgi", "ASGIHandler", "asgi"),
)


def _positional(func: Any) -> int | None:
    """How many positional arguments `func` requires; None if it cannot be told."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds and p.default is p.empty)


def detect(obj: Any) -> str | None:
    """ "asgi", "wsgi" or None (cannot tell) for a callable that is not an aiohttp app."""
    for module, cls, kind in _KNOWN:
        known = getattr(sys.modules.get(module), cls, None)
        if isinstance(known, type) and isinstance(obj, known):
            return kind
    call = getattr(obj, "__call__", None)  # noqa: B004 - the method itself is inspected
    if inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(call):
        return "asgi"
    return {2: "wsgi", 3: "asgi"}.get(_positional(obj) or 0)


def load(target: str, kind: str) -> tuple[str, Any]:
    """Return (kind, app) for `target`: ("aiohttp", Application), ("asgi", callable) or
    ("wsgi", callable). An explicit `kind` that contradicts what the app clearly is fails."""
    obj = resolve(target)
    if not isinstance(obj, web.Application) and callable(obj) and _is_factory(obj):
        obj = obj()
        if inspect.isawaitable(obj):
            close: Callable[[], None] | None = getattr(obj, "close", None)
            if close is not None:
                close()
            raise AppLoadError(
                f"{target} is an async factory; fork mode builds the app before any event "
                "loop runs, so the factory must be a plain function"
            )
    if isinstance(obj, web.Application):
        if kind == "asgi":
            raise AppLoadError(f"{target} is an aiohttp Application, not an ASGI app")
        return "aiohttp", obj
    if kind == "aiohttp":
        raise AppLoadError(f"{target} did not give an aiohttp Application (got {type(obj)!r})")
    if not callable(obj):
        raise AppLoadError(
            f"{target} is neither an aiohttp Application nor an ASGI or WSGI callable"
        )
    seen = detect(obj)
    if kind == "auto":
        if seen is None:
            raise AppLoadError(
                f"{target} ({type(obj).__name__}) is a callable, but neither an ASGI app "
                "(async, scope/receive/send) nor a WSGI app (environ, start_response) by its "
                'signature: set backend.app_kind = "asgi" or "wsgi"'
            )
        return seen, obj
    if seen is not None and seen != kind:
        raise AppLoadError(
            f'{target} is {seen.upper()} by its type or signature, but app_kind = "{kind}"'
        )
    return kind, obj


def call_hook(target: str, app: Any, key: str = "warmup") -> None:
    """Run a hook (warmup, post_fork): `func()` or `func(app)` if it takes one argument."""
    func = resolve(target)
    if not callable(func):
        raise AppLoadError(f"{key} {target} is not callable")
    try:
        takes_app = len(inspect.signature(func).parameters) >= 1
    except (TypeError, ValueError):
        takes_app = False
    result = func(app) if takes_app else func()
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        raise AppLoadError(f"{key} {target} must be a plain function, not async")


# Where each kind of app starts its threads once per fork instead of at import.
_THREADS_GO = {
    "aiohttp": "in on_startup (it runs in every fork)",
    "asgi": "in the lifespan startup or a post_fork hook (both run in every fork)",
    "wsgi": 'in a post_fork hook (backend.post_fork = "module:function", run in every fork)',
}


def refuse_threads(kind: str) -> None:
    """Raise if anything but the main thread runs: fork() copies only the forking thread,
    so a fork would hold a pool, poller or client whose thread does not exist."""
    if threading.active_count() == 1:
        return
    names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
    where = _THREADS_GO.get(kind, _THREADS_GO["wsgi"])
    raise AppLoadError(
        f"the app started threads in the template ({names}); fork copies only the forking "
        f'thread, so start them {where}, or use mode = "exec"'
    )
