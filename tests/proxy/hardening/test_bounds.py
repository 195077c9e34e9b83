"""Issue 10, cases 6-9: what the parser accepts is bounded as bytes arrive. Raw sockets
against scripted_instance.py (which echoes the target); answers judged with h11."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.proxy.hardening.conftest import exchange
from tests.proxy.hardening.strict import Scripted, judge, scripted


async def test_endless_header_line_is_431_as_it_arrives(tmp_path: Path) -> None:
    """Case 6: llhttp joins a header value across reads before it calls us; the bytes
    are counted as they arrive, so an endless line gets 431 at the limit, not a 408 at
    header_timeout after megabytes."""
    async with scripted(tmp_path) as p:
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: "
        ex = await exchange(p.proxy.listen_port, head, *[b"a" * 8192] * 64, pause=0.02, timeout=3)
        assert [a.status for a in judge(ex.data, ["GET"]).answers] == [431] and ex.closed
        assert ex.elapsed < 2.5
        assert Scripted(tmp_path).requests() == []


async def test_pipelined_requests_are_bounded(tmp_path: Path) -> None:
    """Case 7: a read full of pipelined requests queues at most max_pipelined_requests
    behind the running one; their answers come in order, the last says Connection:
    close, and the connection ends there (the client retries the rest)."""
    many = b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(200))
    async with scripted(tmp_path, server={"max_pipelined_requests": 4}) as p:
        ex = await exchange(p.proxy.listen_port, many, timeout=3)
        got = judge(ex.data, ["GET"] * 200)
        assert got.error is None and ex.closed
        assert [a.body for a in got.answers] == [b"/p%d" % i for i in range(5)]
        assert got.answers[-1].header(b"connection") == b"close"
        assert Scripted(tmp_path).targets() == [f"/p{i}" for i in range(5)]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"1;e=" + b"a" * 4000 + b"\r\nx\r\n"] * 1000,  # many 4 KB extensions
        [b"1;e=" + b"a" * (1 << 20) + b"\r\nx\r\n"],  # one 1 MiB extension
    ],
    ids=["many", "one-huge"],
)
async def test_chunk_extensions_are_bounded(tmp_path: Path, chunks: list[bytes]) -> None:
    """Case 8: chunk extensions (which the proxy drops anyway) are capped per body."""
    head = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = b"".join(chunks) + b"0\r\n\r\n"
    parts = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, head, *parts, timeout=5)
        assert [a.status for a in judge(ex.data, ["POST"]).answers] == [400]
        assert Scripted(tmp_path).requests() == []


async def test_http09_request_line_is_400_at_once(tmp_path: Path) -> None:
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, b"GET /x\r\n", timeout=3)
        assert ex.data.startswith(b"HTTP/1.1 400 ") and ex.closed and ex.elapsed < 2


@pytest.mark.parametrize(
    "host",
    [b"a.example b.example", b"evil.example/x@y:1", b"a.example:99999", b"a@b", b"[::1", b"a\\b"],
)
async def test_invalid_host_is_400(tmp_path: Path, host: bytes) -> None:
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
        assert [a.status for a in judge(ex.data, ["GET"]).answers] == [400]
        assert Scripted(tmp_path).requests() == []


@pytest.mark.parametrize(
    "host", [b"a.example", b"a.example:8080", b"[::1]:80", b"127.0.0.1", b"xn--d1acufc.xn--p1ai:1"]
)
async def test_valid_host_is_forwarded(tmp_path: Path, host: bytes) -> None:
    async with scripted(tmp_path) as p:
        # Connection: close ends the exchange with the answer, however long the cold start
        ex = await exchange(
            p.proxy.listen_port,
            b"GET /h HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % host,
            timeout=15,
        )
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"/h"]
