"""Apps that fail in the ways production apps do, for the fault suite (fork mode)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from aiohttp import web


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="ok", headers={"X-Pid": str(os.getpid())})


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slow", headers={"X-Pid": str(os.getpid())})


def tiny_app() -> web.Application:
    """The smallest aiohttp app: / answers, /slow?s=N answers after N seconds."""
    app = web.Application()
    app.router.add_get("/", _hello)
    app.router.add_get("/slow", _slow)
    return app


def hang_forever() -> None:
    """A post_fork hook stuck for good (a connection to a database that never answers)."""
    while True:
        time.sleep(3600)


def crash() -> None:
    """A post_fork hook that raises: every fork dies right after it starts."""
    raise RuntimeError("post_fork cannot reach its database")


def crash_while_marked() -> None:
    """Raises while the file $FAULTS_MARKER exists (a dependency down, then back)."""
    marker = os.environ.get("FAULTS_MARKER", "")
    if marker and os.path.exists(marker):
        raise RuntimeError(f"{marker} exists")


def background_app() -> object:
    """Starlette: GET /?path=P&s=N answers at once, then a BackgroundTask writes P after
    N seconds (an email sent, a cache warmed: work after the last body message)."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def later(path: str, secs: float) -> None:
        await asyncio.sleep(secs)
        with open(path, "w") as f:
            f.write(str(os.getpid()))

    async def home(request: Request) -> PlainTextResponse:
        path = request.query_params.get("path")
        task = None
        if path:
            task = BackgroundTask(later, path, float(request.query_params.get("s", "2")))
        return PlainTextResponse("queued", background=task)

    return Starlette(routes=[Route("/", home)])


def failing_startup_app() -> object:
    """Starlette whose startup imports a module that is not there: every fork fails."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        import faults_missing_module  # type: ignore[import-not-found]  # noqa: F401

        yield

    return Starlette(lifespan=lifespan)
