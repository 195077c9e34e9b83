"""Responses from instances and retries, against a raw-TCP instance that answers broken
responses on purpose: malformed -> 502 counted as bad_response, framing and hop-by-hop
headers never copied, bodies untouched, and retries only where they are safe."""

from __future__ import annotations

import gzip
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import eventually, run_proxy
from tests.proxy.hardening.conftest import exchange, metric, raw_instance


def get(path: bytes, method: bytes = b"GET", body: bytes | None = None) -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    if body is None:
        return head + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def lines(log: Path) -> list[bytes]:
    return log.read_bytes().splitlines() if log.exists() else []


@pytest.mark.parametrize(
    "path", ["/garbage", "/status-bad", "/clte", "/dupcl", "/badchunk", "/obsfold", "/bighead"]
)
async def test_malformed_response_is_502_and_counted(tmp_path: Path, path: str) -> None:
    log = tmp_path / "requests.log"
    async with raw_instance(log, server={"retry_attempts": 0}) as p:
        ex = await exchange(p.proxy.listen_port, get(path.encode()))
        (resp,) = ex.responses
        assert resp.status == 502 and ex.closed
        assert resp.body == b"Bad Gateway: instance failed\n"
        assert await metric(p, "forkproxy_upstream_errors_total", kind="bad_response") == 1
        assert await metric(p, "forkproxy_requests_total", code="502") == 1


async def test_response_framing_and_hop_by_hop_are_ours(tmp_path: Path) -> None:
    async with raw_instance(tmp_path / "log") as p:
        ex = await exchange(p.proxy.listen_port, get(b"/hop"))
        (resp,) = ex.responses
    assert resp.status == 200 and resp.body == b"abcde"
    names = {n.lower() for n, _ in resp.headers}
    assert b"x-kept" in names
    for hop in (b"x-secret", b"keep-alive", b"trailer", b"upgrade"):
        assert hop not in names, hop
    assert resp.header(b"Proxy-Authenticate") == b"Basic"  # the app's challenge, passed on
    assert resp.all(b"Connection") == [b"close"]  # ours: the client asked for close
    framing = resp.all(b"Content-Length") + resp.all(b"Transfer-Encoding")
    assert len(framing) == 1 and b"x-t" not in names  # one framing; the trailer dropped


async def test_compressed_response_is_passed_through_untouched(tmp_path: Path) -> None:
    async with raw_instance(tmp_path / "log") as p:
        ex = await exchange(p.proxy.listen_port, get(b"/gzip"))
        (resp,) = ex.responses
    assert resp.header(b"Content-Encoding") == b"gzip"
    assert gzip.decompress(resp.body) == b"hello world"
    assert resp.body == gzip.compress(b"hello world", mtime=0)


async def test_non_idempotent_request_is_not_retried_once_sent(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    async with raw_instance(log) as p:
        ex = await exchange(p.proxy.listen_port, get(b"/close", b"POST", b"data"))
        assert ex.statuses == [502]
        assert await metric(p, "forkproxy_retries_total") == 0
    assert lines(log).count(b"POST /close HTTP/1.1") == 1


async def test_idempotent_request_is_retried_when_the_instance_closes_silently(
    tmp_path: Path,
) -> None:
    log = tmp_path / "requests.log"
    async with raw_instance(log, server={"retry_attempts": 2}) as p:
        ex = await exchange(p.proxy.listen_port, get(b"/close"))
        assert ex.statuses == [502]  # every try failed
        assert await metric(p, "forkproxy_retries_total") == 2
    assert lines(log).count(b"GET /close HTTP/1.1") == 3


async def test_stale_keepalive_connection_is_not_a_client_error(tmp_path: Path) -> None:
    """The instance closes a pooled keep-alive connection as the next request is sent
    on it: an idempotent request goes again on a fresh connection."""
    log = tmp_path / "requests.log"
    async with raw_instance(log) as p:
        port = p.proxy.listen_port
        assert (await exchange(port, get(b"/stale"))).statuses == [200]
        assert (await exchange(port, get(b"/stale"))).statuses == [200]
        assert (await exchange(port, get(b"/stale", b"DELETE"))).statuses == [200]
        assert await metric(p, "forkproxy_upstream_errors_total", kind="stale") == 2
        # a POST on a stale connection is not replayed: the instance may have seen it
        assert (await exchange(port, get(b"/stale", b"POST", b"x"))).statuses == [502]


async def test_instance_killed_between_requests_is_invisible_to_idempotent_requests() -> None:
    """Once the backend reports the death, its pooled connections are dropped and the
    next request gets a new instance. (A request landing in the milliseconds before the
    death is reported can spend its retries on the dying instance: see HARDENING.md.)"""
    async with run_proxy() as p:
        port = p.proxy.listen_port
        for _ in range(3):
            ex = await exchange(port, get(b"/"))
            (resp,) = ex.responses
            assert resp.status == 200
            pid, first = resp.header(b"X-Pid"), resp.header(b"X-Instance-Id")
            assert pid is not None and first is not None
            os.kill(int(pid), signal.SIGKILL)
            gone = first.decode()
            await eventually(
                lambda gone=gone: all(i["id"] != gone for i in p.proxy.pool.describe()),
                5,
                "the pool to see the death",
            )
            ex = await exchange(port, get(b"/"))
            assert ex.statuses == [200]
            assert ex.responses[0].header(b"X-Pid") != pid


WS = (
    b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def test_refused_websocket_upgrade_is_reframed_not_copied(tmp_path: Path) -> None:
    async with raw_instance(tmp_path / "log") as p:
        ex = await exchange(p.proxy.listen_port, WS % b"/ws-refuse")
        (resp,) = ex.responses
        assert resp.status == 403 and resp.body == b"nope" and ex.closed
        names = [n.lower() for n, _ in resp.headers]
        assert b"x-b" in names and b"x-a" not in names  # named in the instance's Connection
        assert resp.all(b"Connection") == [b"close"] and names.count(b"content-length") == 1
        # any framing llhttp accepts is re-framed (the tunnel used to parse the refusal
        # by hand and gave up on chunked bodies with a 502); a malformed one is a 502
        ex = await exchange(p.proxy.listen_port, WS % b"/ws-chunked")
        (resp,) = ex.responses
        assert resp.status == 403 and resp.body == b"nope" and ex.closed
        ex = await exchange(p.proxy.listen_port, WS % b"/garbage")
        assert ex.statuses == [502] and ex.closed
        assert await metric(p, "forkproxy_upstream_errors_total", kind="bad_response") == 1


async def test_early_answer_from_the_instance_is_relayed(tmp_path: Path) -> None:
    """The instance answers (403) before reading a large body and closes: the client gets
    that answer, not a 502, and the proxy stops sending the body. A streamed body: one
    spooled (body_spool_size, on by default) reaches the instance only once whole, as
    behind nginx; test_spool.py covers those."""
    async with raw_instance(tmp_path / "log", server={"body_spool_size": "0"}) as p:
        head = b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (8 << 20)
        parts = [b"z" * (1 << 20)] * 8
        ex = await exchange(p.proxy.listen_port, head, *parts, pause=1.0, timeout=15)
        (resp,) = ex.responses
        assert resp.status == 403 and resp.body == b"early" and ex.closed
        assert ex.elapsed < 5, ex.elapsed  # not after the client's whole 8 s upload


async def test_instance_that_stops_reading_the_body_is_504(tmp_path: Path) -> None:
    # streamed (not spooled): the client is still sending when the 504 goes out, so the
    # connection closes; a spooled body is whole by then and the connection is kept
    server = {"upstream_header_timeout": "1s", "body_timeout": "10s", "body_spool_size": "0"}
    async with raw_instance(tmp_path / "log", server=server) as p:
        head = b"POST /noread HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (64 << 20)
        ex = await exchange(p.proxy.listen_port, head, *[b"z" * (1 << 20)] * 64, timeout=15)
        assert ex.statuses == [504] and ex.closed
        assert ex.elapsed < 10
        assert await metric(p, "forkproxy_upstream_errors_total", kind="send_timeout") == 1


async def test_instance_that_stalls_mid_body_is_cut(tmp_path: Path) -> None:
    """Head and 3 of 100 body bytes, then silence: after upstream_header_timeout the
    client connection is aborted (the response is visibly incomplete)."""
    async with raw_instance(tmp_path / "log", server={"upstream_header_timeout": "1s"}) as p:
        ex = await exchange(p.proxy.listen_port, get(b"/stall"), timeout=10)
        assert ex.closed and ex.elapsed < 5, ex
        assert ex.data.startswith(b"HTTP/1.1 200") and ex.responses == []  # not complete
        assert await metric(p, "forkproxy_upstream_errors_total", kind="read_timeout") == 1
