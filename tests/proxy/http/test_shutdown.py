"""Shutting the listener down (SIGTERM, socket-activation restart): a connection accepted
but whose first request has not arrived yet is answered, not reset; a keep-alive
connection idle between requests is closed at once; one that never sends is closed after
a short grace, so it cannot hold the shutdown."""

from __future__ import annotations

import asyncio
import time

from forkproxy.proxy.http.limits import Limits
from forkproxy.proxy.http.server import HttpServer, Request

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def _hello(req: Request) -> None:
    req.respond(200, "hello")


async def _server() -> tuple[HttpServer, int]:
    server = HttpServer(_hello, Limits())
    await server.listen("127.0.0.1", 0)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    return server, port


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head + await reader.readexactly(len(b"hello\n"))


async def _accepted(server: HttpServer, n: int) -> None:
    while len(server.connections) < n:
        await asyncio.sleep(0.01)


async def test_request_arriving_just_after_shutdown_starts_is_answered() -> None:
    server, port = await _server()
    fresh_r, fresh_w = await asyncio.open_connection("127.0.0.1", port)
    kept_r, kept_w = await asyncio.open_connection("127.0.0.1", port)
    kept_w.write(GET)
    assert b" 200 " in await _answer(kept_r)
    await _accepted(server, 2)
    async with asyncio.TaskGroup() as tg:
        shutdown = tg.create_task(server.shutdown(10))
        await asyncio.sleep(0.2)
        # the keep-alive connection, idle between requests, is closed at once
        assert await asyncio.wait_for(kept_r.read(), 1) == b""
        # the fresh one's request, late, is still answered, with Connection: close
        fresh_w.write(GET)
        answer = await asyncio.wait_for(_answer(fresh_r), 2)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()
        assert await asyncio.wait_for(fresh_r.read(), 2) == b""
        await asyncio.wait_for(shutdown, 5)
    for w in (fresh_w, kept_w):
        w.close()


async def test_silent_connection_does_not_hold_shutdown() -> None:
    server, port = await _server()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _accepted(server, 1)
    began = time.monotonic()
    await asyncio.wait_for(server.shutdown(10), 5)
    took = time.monotonic() - began
    assert took < 3, took  # the first-request grace (1 s), not the 10 s shutdown grace
    assert await asyncio.wait_for(reader.read(), 1) == b""
    writer.close()
