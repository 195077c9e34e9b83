"""Resolve "module:attr" into a servable app inside the template: an aiohttp
Application (built once, before any fork) or an ASGI callable."""

from __future__ import annotations

import importlib
import inspect
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


def load(target: str, kind: str) -> tuple[str, Any]:
    """Return ("aiohttp", Application) or ("asgi", app) for `target` and `kind`."""
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
        raise AppLoadError(f"{target} is neither an aiohttp Application nor an ASGI callable")
    return "asgi", obj


def call_hook(target: str, app: Any) -> None:
    """Run the warmup hook: `func()` or `func(app)` if it takes one argument."""
    func = resolve(target)
    if not callable(func):
        raise AppLoadError(f"warmup {target} is not callable")
    try:
        takes_app = len(inspect.signature(func).parameters) >= 1
    except (TypeError, ValueError):
        takes_app = False
    result = func(app) if takes_app else func()
    if inspect.isawaitable(result):
        raise AppLoadError(f"warmup {target} must be a plain function, not async")
