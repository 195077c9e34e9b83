"""The upstream client over real sockets: a connection goes back to the pool only at a
message boundary, with nothing buffered and reading not paused."""

from __future__ import annotations

import asyncio

from forkproxy.backends.base import Endpoint
from forkproxy.proxy.http.chunks import HIGH_WATER
from forkproxy.proxy.http.upstream import UpstreamClient

# /big: a body just under the body buffer's high-water mark, then (once the test opens
# the gate) a small tail that crosses it and ends the response in the same read
FIRST = HIGH_WATER - 100
TAIL = 1000
BIG = FIRST + TAIL


_writers: list[asyncio.StreamWriter] = []


async def _serve(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None = None
) -> None:
    _writers.append(writer)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            size = BIG if b" /big " in head else 2
            message = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
            if gate is not None and size == BIG:
                writer.write(message[:-TAIL])
                await writer.drain()
                await gate.wait()
                message = message[-TAIL:]  # one small write: one segment, one read
            writer.write(message)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def test_connection_emptied_at_once_is_pooled_reading() -> None:
    """Issue 10, case 10: a response that crossed the high-water mark and was then taken
    whole (take_all) left reading paused, and the next request on that pooled connection
    waited for the header timeout.

    The read that ends the response must be the one that crosses the high-water mark:
    sent whole, how the body split into reads was up to the kernel and the scheduler, and
    a crossing before the last byte paused reading mid-body for good (nobody reads here),
    so the test timed out waiting for the end (flaky under load). The server now holds the
    tail until the client has buffered everything before it."""
    gate = asyncio.Event()
    server = await asyncio.start_server(lambda r, w: _serve(r, w, gate), "127.0.0.1", 0)
    ep = Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    client = UpstreamClient(connect_timeout=1.0, stall_timeout=5.0)
    try:
        conn, resp = await client.send(
            ep, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n", None, chunked=False, head_only=False
        )
        async with asyncio.timeout(5):
            while resp._chunks.buffered < FIRST:  # nobody reads: the body piles up
                await asyncio.sleep(0.01)
            assert not conn.flow.paused()  # under the mark so far
            gate.set()
            while not resp.complete:
                await asyncio.sleep(0.01)
        assert conn.flow.paused()  # the last read crossed the mark: reading paused
        body = resp.body_buffered()
        assert body is not None and len(body) == BIG
        assert not conn.flow.paused()  # taken whole: reading resumed
        client.release(conn)
        conn2, resp2 = await client.send(
            ep, b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", None, chunked=False, head_only=False
        )
        assert conn2 is conn  # the same, pooled connection
        async with asyncio.timeout(2):
            await resp2.headers_done
            assert await resp2.read() == b"xx"
        client.release(conn2)
    finally:
        client.close()
        server.close()
        for w in _writers:  # the server's side of each connection, before the loop ends
            w.close()
            await w.wait_closed()
        await server.wait_closed()


async def test_as_many_idle_connections_kept_as_an_instance_takes_requests() -> None:
    """100 requests at once to one instance, twice: with max_idle at the pool's
    max_concurrency the second burst reuses every connection of the first (a cap of 64
    closed and reopened 36 connections per burst under load)."""
    accepted: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await _serve(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    ep = Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    client = UpstreamClient(connect_timeout=1.0, stall_timeout=5.0, max_idle=lambda: 128)

    async def one() -> None:
        conn, resp = await client.send(
            ep, b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", None, chunked=False, head_only=False
        )
        async with asyncio.timeout(5):
            await resp.headers_done
            assert await resp.read() == b"xx"
            while await resp.read():
                pass
        client.release(conn)

    try:
        await asyncio.gather(*(one() for _ in range(100)))
        first = len(accepted)
        assert first == 100
        await asyncio.gather(*(one() for _ in range(100)))
        assert len(accepted) == first  # every connection came from the pool
    finally:
        client.close()
        server.close()
        for w in accepted:
            w.close()
            await w.wait_closed()
        await server.wait_closed()
