"""What a forked child runs: serve the template's app on the listening socket it was
handed, on uvloop, until SIGTERM (graceful) or until its template goes away."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

from aiohttp import web

_PARENT_POLL = 0.5


async def _parent_gone(parent_pid: int) -> None:
    # PR_SET_PDEATHSIG already kills us with the template; this catches the rare
    # case where the kernel signal is lost (e.g. the template thread that forked exited).
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event exists for this
        await asyncio.sleep(_PARENT_POLL)


async def serve_aiohttp(app: web.Application, sock: socket.socket, grace: float, ppid: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=grace)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch = loop.create_task(_parent_gone(ppid))
    watch.add_done_callback(lambda _t: stop.set())
    try:
        await stop.wait()
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await runner.cleanup()


async def serve_asgi(app: Any, sock: socket.socket, grace: float, ppid: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="none",
        lifespan="auto",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    watch = loop.create_task(_parent_gone(ppid))

    def _exit(_t: object) -> None:
        server.should_exit = True

    watch.add_done_callback(_exit)
    try:
        await server.serve(sockets=[sock])  # handles SIGTERM/SIGINT itself (graceful)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


def run_child(kind: str, app: Any, fd: int, grace: float, ppid: int) -> None:
    import uvloop

    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    if kind == "aiohttp":
        uvloop.run(serve_aiohttp(app, sock, grace, ppid))
    else:
        uvloop.run(serve_asgi(app, sock, grace, ppid))
