"""Apps that fail on purpose, for backend failure tests.

`create_app` raises at build time; `never_ready` builds an app whose startup hook
hangs forever, so the server never answers."""

from __future__ import annotations

import asyncio

from aiohttp import web


def create_app() -> web.Application:
    raise RuntimeError("example failure: create_app refuses to build")


async def _hang(app: web.Application) -> None:
    await asyncio.Event().wait()


def never_ready() -> web.Application:
    app = web.Application()
    app.on_startup.append(_hang)
    return app
