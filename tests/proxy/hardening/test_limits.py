"""Limits and deadlines on a raw socket, each with a tight value from [server]: request
target (414), header bytes and count (431), body size (413, also while a chunked body
streams), header read deadline (408 and close), idle keep-alive close, body inactivity
(408), slow readers dropped, max client connections (503), upstream timeouts (504)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from forkproxy.backends.base import Endpoint
from forkproxy.proxy.http.upstream import ConnectTimeout, UpstreamClient
from tests.conftest import Running
from tests.proxy.hardening.conftest import exchange, metric, raw_instance, recorder, seen

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = {
    "max_url_size": 256,
    "max_header_size": 1024,
    "max_headers": 10,
    "max_body_size": 1000,
    "header_timeout": "500ms",
    "keepalive_timeout": "700ms",
    "body_timeout": "500ms",
    "send_timeout": "500ms",
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxy() -> AsyncIterator[Running]:
    async with recorder(server=LIMITS) as p:
        yield p


def get(target: bytes = b"/h", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"Connection: close\r\n\r\n"


async def test_request_target_limit_is_414(proxy: Running) -> None:
    port = proxy.proxy.listen_port
    assert (await exchange(port, get(b"/" + b"a" * 200))).statuses == [200]
    ex = await exchange(port, get(b"/" + b"a" * 300))
    assert ex.statuses == [414] and ex.closed


async def test_header_size_and_count_limits_are_431(proxy: Running) -> None:
    port = proxy.proxy.listen_port
    assert (await exchange(port, get(extra=b"X-A: " + b"v" * 800 + b"\r\n"))).statuses == [200]
    ex = await exchange(port, get(extra=b"X-A: " + b"v" * 1100 + b"\r\n"))
    assert ex.statuses == [431] and ex.closed
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 150) for i in range(7))  # each fine, sum not
    assert (await exchange(port, get(extra=many))).statuses == [431]
    nine = b"".join(b"X-%d: v\r\n" % i for i in range(7))  # + Host + Connection = 9
    assert (await exchange(port, get(extra=nine))).statuses == [200]
    eleven = b"".join(b"X-%d: v\r\n" % i for i in range(9))
    ex = await exchange(port, get(extra=eleven))
    assert ex.statuses == [431] and ex.closed


async def test_declared_body_over_the_limit_is_413_before_it_is_sent(proxy: Running) -> None:
    port = proxy.proxy.listen_port
    ex = await exchange(port, b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
    assert ex.statuses == [413] and ex.closed
    ex = await exchange(
        port,
        b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert ex.statuses == [413]  # and no 100 Continue first
    ok = await exchange(
        port, b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    )
    assert ok.statuses == [200] and seen(ok.responses[0])["body_len"] == 1000


async def test_chunked_body_over_the_limit_is_413_while_streaming(proxy: Running) -> None:
    chunk = b"258\r\n" + b"y" * 600 + b"\r\n"
    # the body never ends: the 413 must come while the client is still sending
    ex = await exchange(
        proxy.proxy.listen_port,
        b"POST /h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
        chunk,
        chunk,
        pause=0.05,
        timeout=5,
    )
    assert ex.statuses == [413] and ex.closed
    assert ex.elapsed < 3


async def test_slow_request_head_is_408_and_closed_at_header_timeout(proxy: Running) -> None:
    parts = [b"GET /h HTTP/1.1\r\n", b"Host: t\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"]
    ex = await exchange(proxy.proxy.listen_port, *parts, pause=0.2, timeout=5)
    assert ex.statuses == [408] and ex.closed
    assert 0.45 < ex.elapsed < 2.5, ex.elapsed


async def test_silent_connection_is_closed_at_header_timeout(proxy: Running) -> None:
    ex = await exchange(proxy.proxy.listen_port, timeout=5)
    assert ex.closed and ex.data == b""
    assert 0.45 < ex.elapsed < 2.5, ex.elapsed


async def test_idle_keepalive_connection_is_closed_silently(proxy: Running) -> None:
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy.listen_port)
    writer.write(b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        t1 = time.monotonic()
        rest = await reader.read()  # EOF when the keep-alive deadline passes
    writer.close()
    assert rest == b""
    assert 0.6 < time.monotonic() - t1 < 3, time.monotonic() - t0


async def test_stalled_body_is_408(proxy: Running) -> None:
    ex = await exchange(
        proxy.proxy.listen_port,
        b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
        timeout=5,
    )
    assert ex.statuses == [408] and ex.closed
    assert 0.45 < ex.elapsed < 3, ex.elapsed


async def test_client_that_stops_reading_is_dropped(proxy: Running) -> None:
    total = 64 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy.listen_port)
    writer.write(get(b"/__bytes?n=%d" % total))
    await writer.drain()
    await asyncio.sleep(2.5)  # send_timeout is 0.5 s
    got = 0
    try:
        async with asyncio.timeout(10):
            while chunk := await reader.read(1 << 20):
                got += len(chunk)
    except ConnectionError:
        pass
    writer.close()
    assert got < total / 2, got


async def test_max_connections_is_503() -> None:
    async with recorder(server={"max_connections": 3}) as p:
        port = p.proxy.listen_port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, w in held:
            w.write(b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n")
        for r, _ in held:
            async with asyncio.timeout(5):
                assert (await r.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        ex = await exchange(port, get())
        assert ex.statuses == [503] and ex.closed
        assert await metric(p, "forkproxy_rejected_total", reason="max_connections") == 1
        held[0][1].close()
        await asyncio.sleep(0.2)
        assert (await exchange(port, get())).statuses == [200]
        for _, w in held[1:]:
            w.close()


async def test_instance_that_never_answers_is_504(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    async with raw_instance(log, server={"upstream_header_timeout": "500ms"}) as p:
        ex = await exchange(p.proxy.listen_port, get(b"/hang"))
        assert ex.statuses == [504]
        assert 0.45 < ex.elapsed < 3
        assert await metric(p, "forkproxy_upstream_errors_total", kind="timeout") == 1


async def test_connect_timeout_is_its_own_error() -> None:
    # a listener whose accept queue is full drops SYNs: connect() hangs
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.1)
        client = UpstreamClient(connect_timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(ConnectTimeout):
            await client._connect(Endpoint("127.0.0.1", port))
        assert time.monotonic() - t0 < 2
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_slow_small_body_holds_no_instance_slot() -> None:
    """Bodies up to 64 KiB are read before an instance slot is taken (unless the client
    sent Expect: 100-continue), so dribbling clients cannot occupy every instance."""
    async with recorder(
        server={"body_timeout": "3s"}, pool={"max_instances": 1, "max_concurrency": 1}
    ) as p:
        port = p.proxy.listen_port
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, w in slow:
            w.write(b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        ex = await exchange(port, get())
        assert ex.statuses == [200]
        assert time.monotonic() - t0 < 1.5  # not queued behind the slow bodies
        for r, w in slow:  # they finish once their bodies do
            w.write(b"d" * 97)
            async with asyncio.timeout(5):
                assert (await r.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
            w.close()


@pytest.mark.slow
async def test_body_below_min_rate_is_408_after_the_grace() -> None:
    """Bytes keep coming (body_timeout never fires) but too slowly: body_min_rate ends it
    once the 5 s grace is over."""
    async with recorder(server={"body_timeout": "2s", "body_min_rate": 1000}) as p:
        head = b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n"
        ex = await exchange(p.proxy.listen_port, head, *[b"x" * 10] * 40, pause=0.5, timeout=12)
    assert ex.statuses == [408] and ex.closed
    assert 5 <= ex.elapsed < 9, ex.elapsed


@pytest.mark.slow
async def test_body_dribbled_between_long_pauses_is_cut_when_the_rate_falls_behind() -> None:
    """R-U-Dead-Yet: one byte every 1.8 s (under body_timeout, so the body never stalls).
    The rate falls behind when the 5 s grace ends; the connection is cut then, not at the
    next byte after it (~5.4 s) nor, with longer pauses, seconds later."""
    async with recorder(server={"body_timeout": "3s", "body_min_rate": 1000}) as p:
        head = b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
        ex = await exchange(p.proxy.listen_port, head, *[b"x"] * 8, pause=1.8, timeout=12)
    assert ex.statuses == [408] and ex.closed
    assert 4.9 <= ex.elapsed < 5.35, ex.elapsed


async def test_partial_head_behind_a_slow_request_still_times_out(tmp_path: Path) -> None:
    """The header deadline of a pipelined request that is still arriving must survive
    the request in front of it outliving that deadline."""
    server = {"upstream_header_timeout": "1s", "header_timeout": "500ms"}
    async with raw_instance(tmp_path / "log", server=server) as p:
        ex = await exchange(
            p.proxy.listen_port,
            b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHo",
            timeout=6,
        )
    assert ex.statuses == [504, 408] and ex.closed
    assert ex.elapsed < 3, ex.elapsed
