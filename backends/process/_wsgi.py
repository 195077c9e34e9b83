"""A fork serving a WSGI app with waitress: threads answer requests, the main thread
runs waitress's poll loop on the socket the fork was handed, until SIGTERM (stop
accepting, let in-flight requests finish within the grace, then exit) or until the
template is gone.

Why waitress (numbers in docs/ARCHITECTURE.md, "The WSGI server a fork embeds"):
measured against a2wsgi under uvicorn from the same warm parent, it served 1.2-1.9x
the requests per second of one instance with a cold start as fast or faster; it is
pure Python, WSGI-native (no thread hop per body chunk) and strict about HTTP/1.1
framing. Its threads start in the fork, never in the template (fork copies only the
forking thread)."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from forkproxy.backends.process._working import AfterClose, send_from_thread

_POLL = 0.5  # seconds between checks that the template is still there


@dataclass(frozen=True)
class WsgiApp:
    """What the template hands its forks: the app and how to serve it."""

    app: Any
    threads: int
    after: AfterClose  # the app's close() calls, watched in the fork (see serve)


def prepare(app: Any, threads: int) -> WsgiApp:
    """In the template: import waitress now (a fork then imports nothing)."""
    import waitress.server  # noqa: F401

    after = AfterClose(app)
    return WsgiApp(bodiless(after), threads, after)


def _no_body(status: str) -> bool:
    """1xx, 204 and 304 answers never carry a body (RFC 9112 6.3)."""
    code = status[:3]
    return code.startswith("1") or code in ("204", "304")


def bodiless(app: Any) -> Any:
    """`app` answering HEAD, 1xx, 204 and 304 with a head and no body on the wire.

    waitress writes what the app gives for HEAD (its body check is by status only), and
    for any status when the app returns wsgi.file_wrapper (Django's FileResponse). Those
    bytes arrive after a complete answer: a proxy that reuses the connection hands them
    to the next request as its response. Here the body is dropped before waitress sees
    it: the app's iterable is still run (start_response may come from its first chunk)
    and closed, a file is closed unread, and the headers, Content-Length included, stay
    as the app set them."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        head = environ.get("REQUEST_METHOD") == "HEAD"
        status = ""

        def drop() -> bool:
            return head or _no_body(status)

        def remember(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status
            status = s
            write = start_response(s, headers, exc_info)

            def guarded_write(data: bytes) -> None:
                write(b"" if drop() else data)  # b"": the head still goes out on write

            return guarded_write

        result: Iterable[bytes] = app(environ, remember)
        if status and not drop():
            return result  # as the app gave it: waitress's file_wrapper fast path kept
        wrapper = environ.get("wsgi.file_wrapper")
        if drop() and isinstance(wrapper, type) and isinstance(result, wrapper):
            _close(result)  # a file, read for nothing otherwise
            return []
        return _filtered(result, drop)

    return guarded


def _filtered(result: Iterable[bytes], drop: Callable[[], bool]) -> Iterator[bytes]:
    try:
        for chunk in result:
            if not drop():
                yield chunk
    finally:
        _close(result)


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _busy(channels: dict[int, Any]) -> bool:
    from waitress.channel import HTTPChannel

    return any(
        isinstance(ch, HTTPChannel) and (ch.requests or ch.total_outbufs_len)
        for ch in channels.values()
    )


def serve(
    wsgi: WsgiApp,
    sock: socket.socket,
    grace: float,
    ppid: int,
    report: socket.socket | None = None,
) -> None:
    from waitress import wasyncore
    from waitress.server import create_server

    if report is not None:
        threading.Thread(
            target=wsgi.after.watch,
            args=(functools.partial(send_from_thread, report),),
            name="forkproxy-after-close",
            daemon=True,  # the fork ends with os._exit, watched or not
        ).start()

    server: Any = create_server(
        wsgi.app,
        sockets=[sock],
        threads=wsgi.threads,
        # forkproxy already decided which X-Forwarded-*/Forwarded headers to pass (its
        # trusted_proxies); waitress would drop them all, its peer being "untrusted".
        clear_untrusted_proxy_headers=False,
        asyncore_use_poll=True,  # no FD_SETSIZE ceiling on connections
    )
    # "Task queue depth is N" whenever a request waits a moment for a thread: the
    # proxy's queue and instance metrics already say when instances are saturated.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    channels: dict[int, Any] = server._map
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True
        server.pull_trigger()  # wake the poll now, not after _POLL

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stopping and os.getppid() == ppid:
        wasyncore.loop(timeout=_POLL, map=channels, use_poll=True, count=1)
    # Stop accepting (close only the listener: the trigger must keep waking the loop
    # for responses the worker threads still produce), then drain.
    wasyncore.dispatcher.close(server)
    # A request stays in its channel's list until its response's close() has returned,
    # so work done there (reported as "working", see _working.AfterClose) is waited for
    # like a request in flight.
    deadline = time.monotonic() + grace
    while _busy(channels) and time.monotonic() < deadline and os.getppid() == ppid:
        wasyncore.loop(timeout=0.05, map=channels, use_poll=True, count=1)
    server.task_dispatcher.shutdown(timeout=max(0.0, deadline - time.monotonic()))
