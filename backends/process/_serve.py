"""What a forked child runs: serve the template's app on the listening socket it was
handed, on uvloop, until SIGTERM (graceful) or until its template goes away.

A child is either forked for an instance (its socket is known at once) or forked ahead
as a spare: it builds its loop (aiohttp: and runs the app's on_startup), then waits for
the template to assign it an instance (id + socket). `acquire` hides the difference.
ASGI apps are served by uvicorn, configured and loaded once in the template; WSGI apps
by waitress (_wsgi.py), whose threads start in the fork."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from aiohttp import web

from forkproxy.backends.support.extras import extra_needed
from forkproxy.backends.support.tasks import TaskSet

_PARENT_POLL = 0.5
_PRIME_TIMEOUT = 2.0
PRIME_ROUNDS = 20  # the template's: enough calls for 3.11's adaptive interpreter to quicken
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

    @property
    def tasks(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(sig)
        await self._tasks.aclose()


async def _setup(runner: web.AppRunner) -> bool:
    await runner.setup()
    return True


async def _prime(rounds: int = 1) -> None:
    """Requests through aiohttp's server machinery on a throwaway app (none of the user's
    handlers, middleware or hooks run), each on a new connection. Run by the template before
    it forks: code objects on that path are then quickened (3.11+ rewrites bytecode in place
    as it warms) and lazy state initialised once, instead of in every fork during its first
    client's request, where each such write copies a page. A spare primes again while it
    waits, so the pages it still writes are copied off the start path too.
    Sockets are made by hand (127.0.0.1 literals, no getaddrinfo): the loop must not
    start libuv's resolver threads in a template."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        lsock.setblocking(False)
        site = web.SockSite(runner, lsock)
        await site.start()
        for _ in range(rounds):
            csock = socket.create_connection(lsock.getsockname())  # done by the backlog
            reader, writer = await asyncio.open_connection(sock=csock)
            writer.write(b"GET / HTTP/1.1\r\nHost: prime\r\nConnection: close\r\n\r\n")
            await reader.read()
            writer.close()
            await writer.wait_closed()
    finally:
        await runner.cleanup()
        lsock.close()


def prime_template(rounds: int = PRIME_ROUNDS) -> None:
    """In the template, before any fork: a loop made and closed (as every fork makes
    one), the child's signal handling set up and removed, and `rounds` primed requests.
    Best effort, like a spare's: a template that cannot prime still forks."""
    import uvloop

    async def run() -> None:
        life = Lifetime(os.getppid())
        await life.close()
        await _try_prime(rounds)

    uvloop.run(run())


async def _try_prime(rounds: int = 1) -> bool:
    try:
        async with asyncio.timeout(_PRIME_TIMEOUT):
            await _prime(rounds)
    except (OSError, TimeoutError):
        pass  # best effort: an instance that could not prime still serves
    return True


def nothing_to_finish(app: web.Application, runner: web.AppRunner, own_tasks: int) -> bool:
    """True if a graceful stop would do nothing but close sockets and free memory: the
    app has no shutdown or cleanup hooks (sub-apps' hooks are chained into these), no
    connection is in the middle of a request, and no task is running beyond our own
    `own_tasks` and one per idle connection (a task the app started, in on_startup or
    from a handler, is cancelled by a graceful stop: its cleanup code must get to run)."""
    own_cleanup = [app.cleanup_ctx._on_cleanup]  # aiohttp registers its cleanup_ctx runner
    if len(app.on_shutdown) or list(app.on_cleanup) != own_cleanup or len(app.cleanup_ctx):
        return False
    server = runner.server
    conns = server.connections if server is not None else []
    if any(getattr(c, "_request_in_progress", True) for c in conns):
        return False
    return len(asyncio.all_tasks()) <= own_tasks + len(conns)


def exit_now(code: int = 0) -> NoReturn:
    """End a fork (one with nothing left to finish, or one whose serving is over), skipping
    the loop's and the interpreter's teardown: every object freed there is a write to a page
    the fork shares with its template, i.e. a page copied only to be thrown away. The kernel
    closes the sockets (idle keep-alive connections see a FIN, as after a graceful stop)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
        # As aiohttp's own cleanup does before closing idle connections: a request whose
        # bytes already arrived gets one loop turn to start (and so to be waited for).
        await asyncio.sleep(0)
        if nothing_to_finish(app, runner, 1 + life.tasks):
            exit_now()  # most forks, and every fork of a fresh-instance-per-request pool
    finally:
        await runner.cleanup()
        if life is not None:
            await life.close()


class StartupFailed(Exception):
    """The app's startup failed; str() is what it logged (the fork reports it as its
    crash: the template shows it once per kind, not once per fork)."""


class StartupLog(logging.Handler):
    """uvicorn's error log in a fork: kept until the server has started (a lifespan
    failure's traceback becomes the fork's crash report), written to stderr after,
    as Python's last-resort handler would have."""

    def __init__(self, started: Callable[[], bool]) -> None:
        super().__init__(logging.WARNING)
        self._started = started
        self._kept: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if self._started():
            sys.stderr.write(text + "\n")
        else:
            self._kept.append(text)

    def text(self) -> str:
        return "\n".join(self._kept)


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
    from forkproxy.backends.process._working import AfterResponse

    config.loaded_app = AfterResponse(config.loaded_app)
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


async def serve_asgi(
    config: Any,
    acquire: Acquire,
    grace: float,
    ppid: int,
    spare: bool,
    report: socket.socket | None = None,
) -> None:
    import uvicorn

    sock = await _acquire(acquire, ppid, spare)
    if sock is None:
        return
    if report is not None:
        from forkproxy.backends.process._working import Reporter

        config.loaded_app.notify = Reporter(report)
    server = uvicorn.Server(config)
    tasks = TaskSet("child")
    startup_log = StartupLog(lambda: bool(server.started))
    errors = logging.getLogger("uvicorn.error")
    if not errors.hasHandlers():  # else the app's logging config already shows them
        errors.addHandler(startup_log)

    async def watch() -> None:
        while os.getppid() == ppid:  # noqa: ASYNC110 - no event exists for this
            await asyncio.sleep(_PARENT_POLL)
        server.should_exit = True

    tasks.spawn(watch(), "parent-watch")
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn's way of saying the lifespan startup failed
        raise StartupFailed(startup_log.text() or f"ASGI startup failed ({exc})") from None
    finally:
        await tasks.aclose()


def run_child(
    kind: str,
    app: Any,
    acquire: Acquire,
    grace: float,
    ppid: int,
    *,
    spare: bool,
    report: socket.socket | None = None,
) -> None:
    import uvloop

    if kind == "aiohttp":
        uvloop.run(serve_aiohttp(app, acquire, grace, ppid, spare))
    elif kind == "wsgi":
        from forkproxy.backends.process import _wsgi

        sock = uvloop.run(_acquire(acquire, ppid, spare))
        if sock is not None:
            _wsgi.serve(app, sock, grace, ppid, report)
    else:
        uvloop.run(serve_asgi(app, acquire, grace, ppid, spare, report))


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
