"""Test apps for fork mode: a warmup hook whose effect children inherit."""

from __future__ import annotations

import os

from aiohttp import web
from aiohttp.typedefs import Handler

WARMED_IN = 0  # pid of the process that ran warmup(); inherited by forks


def warmup(app: web.Application) -> None:
    global WARMED_IN
    WARMED_IN = os.getpid()
    record = os.environ.get("FORKPROXY_TEST_WARMUP_LOG")
    if record:
        with open(record, "a") as f:
            f.write(f"{os.getpid()}\n")


async def _warm(request: web.Request) -> web.Response:
    return web.json_response({"warmed_in": WARMED_IN, "pid": os.getpid()})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _warm)
    return app


def threaded_app() -> web.Application:
    """Starts a thread while the template builds it: fork mode must refuse this app."""
    import threading

    threading.Thread(target=threading.Event().wait, name="app-poller", daemon=True).start()
    return create_app()


@web.middleware
async def _log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    record = os.environ.get("FORKPROXY_TEST_REQUEST_LOG")
    if record:
        with open(record, "a") as f:
            f.write(f"{os.getpid()} {request.path}\n")
    return await handler(request)


def logging_app() -> web.Application:
    """Every request its handlers and middleware see is appended to a file."""
    app = web.Application(middlewares=[_log_requests])
    app.router.add_get("/", _warm)
    return app


def slow_post_fork() -> None:
    """A fork that takes 300 ms before it serves: connections wait in the backlog."""
    import time

    time.sleep(0.3)


def failing_post_fork() -> None:
    """Every fork dies after the fork, before it serves a byte."""
    raise RuntimeError("this fork refuses to serve")


def cleanup_app() -> web.Application:
    """Records its shutdown and cleanup hooks (pid and hook) in a file when they run."""

    async def record(app: web.Application, hook: str) -> None:
        with open(os.environ["FORKPROXY_TEST_HOOK_LOG"], "a") as f:
            f.write(f"{os.getpid()} {hook}\n")

    async def on_shutdown(app: web.Application) -> None:
        await record(app, "shutdown")

    async def on_cleanup(app: web.Application) -> None:
        await record(app, "cleanup")

    app = create_app()
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def background_task_app() -> web.Application:
    """Starts a task in on_startup whose cleanup (on cancellation) writes to a file."""
    import asyncio

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            with open(os.environ["FORKPROXY_TEST_HOOK_LOG"], "a") as f:
                f.write(f"{os.getpid()} worker cancelled\n")

    running: list[asyncio.Task[None]] = []  # held: a task nobody references may vanish

    async def start_worker(app: web.Application) -> None:
        running.append(asyncio.get_running_loop().create_task(worker()))

    app = create_app()
    app.on_startup.append(start_worker)
    return app
