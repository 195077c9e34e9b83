"""What a forked child runs: serve the template's app on the listening socket it was
handed, on uvloop, until SIGTERM (graceful) or until its template goes away.

A child is either forked for an instance (its socket is known at once) or forked ahead
as a spare: it builds its loop (aiohttp: and runs the app's on_startup), then waits for
the template to assign it an instance (id + socket). `acquire` hides the difference.
ASGI apps are served by uvicorn, configured and loaded once in the template; WSGI apps
by waitress (_wsgi.py), whose threads start in the fork."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from backends.support.extras import extra_needed
from backends.support.tasks import TaskSet

_PARENT_POLL = 0.5
_PRIME_TIMEOUT = 2.0
T = TypeVar("T")
Acquire = Callable[[], Awaitable[socket.socket | None]]


class Lifetime:
    """Ends on SIGTERM/SIGINT, or when the template is gone. PR_SET_PDEATHSIG already
    kills us with the template; the getppid() poll is the belt to those braces."""

    def __init__(self, ppid: int) -> None:
        self.stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.stop.set)
        self._tasks = TaskSet("child")
        self._tasks.spawn(self._parent_gone(ppid), "parent-watch")

    async def _parent_gone(self, ppid: int) -> None:
        while os.getppid() == ppid:  # noqa: ASYNC110 - no event exists for this
            await asyncio.sleep(_PARENT_POLL)
        self.stop.set()

    async def until(self, aw: Awaitable[T]) -> T | None:
        """`aw`'s result, or None if we were told to stop first."""
        # A race whose two tasks live only inside this call (both awaited below), like a
        # TaskGroup's; but a TaskGroup would wrap aw's exception in an ExceptionGroup and a
        # TaskSet would log it as unhandled, where the caller wants it as it is.
        work = asyncio.ensure_future(aw)  # noqa: TID251 - awaited or cancelled right here
        stop = asyncio.ensure_future(self.stop.wait())  # noqa: TID251 - likewise
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (work, stop):
            task.cancel()
        await asyncio.gather(work, stop, return_exceptions=True)
        return work.result() if work.done() and not work.cancelled() else None

    async def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)
        await self._tasks.aclose()


async def _setup(runner: web.AppRunner) -> bool:
    await runner.setup()
    return True


async def _prime() -> None:
    """One request through aiohttp's server machinery on a throwaway app (none of the user's
    handlers, middleware or hooks run), by a spare while it waits to be assigned. The pages
    that path writes (refcounts of aiohttp's code and module objects) are then copied from
    the template now, off the start path, instead of during the first client's request."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: prime\r\nConnection: close\r\n\r\n")
        await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()


async def _try_prime() -> bool:
    try:
        async with asyncio.timeout(_PRIME_TIMEOUT):
            await _prime()
    except (OSError, TimeoutError):
        pass  # best effort: a spare that could not prime still serves
    return True


async def serve_aiohttp(
    app: web.Application, acquire: Acquire, grace: float, ppid: int, spare: bool
) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace)
    life: Lifetime | None = None
    try:
        if spare:
            # on_startup runs before the spare is assigned; raced against SIGTERM so a
            # spare stuck in startup (or never assigned) still stops gracefully.
            life = Lifetime(ppid)
            if await life.until(_setup(runner)) is None:
                return
            if await life.until(_try_prime()) is None:
                return
            sock = await life.until(acquire())
        else:
            # Straight through (no extra tasks on the cold path). A SIGTERM during
            # startup meets the default disposition: the process just ends.
            await runner.setup()
            life = Lifetime(ppid)
            sock = await acquire()
        if sock is None:
            return
        site = web.SockSite(runner, sock, shutdown_timeout=grace)
        await site.start()
        await life.stop.wait()
    finally:
        await runner.cleanup()
        if life is not None:
            await life.close()


def asgi_config(app: Any, grace: float) -> Any:
    """uvicorn's config, loaded (protocol classes imported) in the template, once."""
    with extra_needed("an ASGI app in fork mode"):
        import uvicorn

    config = uvicorn.Config(
        app,
        loop="none",
        lifespan="auto",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(grace)),
    )
    config.load()
    return config


async def _acquire(acquire: Acquire, ppid: int, spare: bool) -> socket.socket | None:
    """The socket to serve on; a spare waits for it, stopping on SIGTERM or orphaning.
    Its handlers are gone again on return: the server installs its own."""
    if not spare:
        return await acquire()
    life = Lifetime(ppid)
    try:
        return await life.until(acquire())
    finally:
        await life.close()


async def serve_asgi(config: Any, acquire: Acquire, grace: float, ppid: int, spare: bool) -> None:
    import uvicorn

    sock = await _acquire(acquire, ppid, spare)
    if sock is None:
        return
    server = uvicorn.Server(config)
    tasks = TaskSet("child")

    async def watch() -> None:
        while os.getppid() == ppid:  # noqa: ASYNC110 - no event exists for this
            await asyncio.sleep(_PARENT_POLL)
        server.should_exit = True

    tasks.spawn(watch(), "parent-watch")
    try:
        await server.serve(sockets=[sock])
    finally:
        await tasks.aclose()


def run_child(
    kind: str, app: Any, acquire: Acquire, grace: float, ppid: int, *, spare: bool
) -> None:
    import uvloop

    if kind == "aiohttp":
        uvloop.run(serve_aiohttp(app, acquire, grace, ppid, spare))
    elif kind == "wsgi":
        from backends.process import _wsgi

        sock = uvloop.run(_acquire(acquire, ppid, spare))
        if sock is not None:
            _wsgi.serve(app, sock, grace, ppid)
    else:
        uvloop.run(serve_asgi(app, acquire, grace, ppid, spare))


def socket_now(fd: int) -> Acquire:
    """For a child forked for an instance: its socket is already here."""

    async def acquire() -> socket.socket:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock

    return acquire


def socket_from_template(ctl: socket.socket, on_assign: Callable[[bytes], None]) -> Acquire:
    """For a spare: wait for one message (assignment JSON + the listening socket)."""

    async def acquire() -> socket.socket | None:
        loop = asyncio.get_running_loop()
        ctl.setblocking(False)
        while True:
            readable = loop.create_future()
            loop.add_reader(ctl.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(ctl.fileno())
            try:
                data, fds, _flags, _addr = socket.recv_fds(ctl, 64 * 1024, 1)
            except BlockingIOError:
                continue
            ctl.close()
            if not data or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                return None  # the template went away before assigning us
            on_assign(data)
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            return sock

    return acquire
