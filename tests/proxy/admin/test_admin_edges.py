"""Issue 21, item 5, the admin listener's edges on real sockets: a Host that is not
loopback, an IP or a configured name is refused (DNS rebinding), connections that send
nothing or only unauthenticated requests are closed after admin_keepalive_timeout, and
admin_max_connections caps the open ones."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import pytest

from tests.conftest import Running, eventually, run_proxy
from tests.proxy.hardening.conftest import exchange, metric

TOKEN = "edge-token-for-tests"


async def _get(p: Running, path: str, host: bytes | None, extra: bytes = b"") -> int:
    host_line = b"Host: " + host + b"\r\n" if host is not None else b""
    ex = await exchange(
        p.proxy.admin_port,
        b"GET "
        + path.encode()
        + b" HTTP/1.1\r\n"
        + host_line
        + extra
        + b"Connection: close\r\n\r\n",
    )
    (resp,) = ex.responses
    return resp.status


async def test_a_foreign_host_is_refused_and_loopback_names_are_answered() -> None:
    async with run_proxy() as p:
        port = str(p.proxy.admin_port).encode()
        for path in ("/instances", "/metrics", "/"):
            assert await _get(p, path, b"evil.example") == 421, path
            assert await _get(p, path, b"evil.example:" + port) == 421, path
        for ok in (
            b"localhost",
            b"LOCALHOST:" + port,
            b"localhost.",
            b"127.0.0.1",
            b"127.0.0.1:" + port,
            b"[::1]",
            b"[::1]:" + port,
            b"10.1.2.3:9090",  # an IP: a probe by pod IP, never a rebound name
        ):
            assert await _get(p, "/instances", ok) == 200, ok
        # HTTP/1.0 without Host (a script's probe); a browser always sends one
        ex = await exchange(p.proxy.admin_port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert ex.statuses == [200]


async def test_allowed_hosts_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    async with run_proxy(server={"admin_allowed_hosts": ["admin.internal"]}) as p:
        assert await _get(p, "/metrics", b"Admin.Internal:9090") == 200
        assert await _get(p, "/metrics", b"evil.example") == 421
    async with run_proxy(server={"admin_allowed_hosts": ["*"]}) as p:
        assert await _get(p, "/metrics", b"evil.example") == 200
    # with a token too, a foreign Host is refused before the token is looked at
    monkeypatch.setenv("FORKPROXY_TEST_EDGE_TOKEN", TOKEN)
    async with run_proxy(server={"admin_token_env": "FORKPROXY_TEST_EDGE_TOKEN"}) as p:
        bearer = f"Authorization: Bearer {TOKEN}\r\n".encode()
        assert await _get(p, "/metrics", b"evil.example", bearer) == 421
        assert await _get(p, "/metrics", b"localhost", bearer) == 200
        assert await _get(p, "/metrics", b"localhost") == 401


async def _closed_within(port: int, send: bytes, timeout: float) -> tuple[bool, float, bytes]:
    """(closed by the server, seconds until then, what it answered)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        if send:
            writer.write(send)
            await writer.drain()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
        return True, time.monotonic() - t0, got
    except TimeoutError:
        return False, time.monotonic() - t0, got
    except ConnectionError:
        return True, time.monotonic() - t0, got
    finally:
        writer.close()


async def test_idle_and_unauthenticated_connections_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORKPROXY_TEST_EDGE_TOKEN", TOKEN)
    server = {"admin_token_env": "FORKPROXY_TEST_EDGE_TOKEN", "admin_keepalive_timeout": "1s"}
    async with run_proxy(server=server) as p:
        port = p.proxy.admin_port
        sends = [
            b"",  # nothing at all
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",  # 401, kept alive
            b"GET /instances HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",  # half a head
        ]
        results = await asyncio.gather(
            *(_closed_within(port, s, timeout=10) for s in sends for _ in range(10))
        )
    for closed, elapsed, got in results:
        # 1 s configured; a generous bound for a shared box, far below aiohttp's ~1 h
        assert closed and 0.5 < elapsed < 8, (elapsed, got[:80])
    assert all(b" 401 " in got for _, _, got in results[10:20])


async def test_admin_connections_are_capped() -> None:
    async with run_proxy(server={"admin_max_connections": 5}) as p, AsyncExitStack() as stack:
        port = p.proxy.admin_port
        runner = p.proxy._admin
        assert runner is not None and runner.server is not None
        held = []
        for _ in range(5):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            stack.callback(w.close)
            held.append((r, w))
        server = runner.server
        await eventually(lambda: len(server.connections) == 5, 5, "5 admin connections")
        for _ in range(3):
            closed, _, got = await _closed_within(port, b"", timeout=5)
            assert closed and got.startswith(b"HTTP/1.1 503 "), got
        # the held ones still work; one closed frees a place
        r, w = held.pop()
        w.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await r.read()).startswith(b"HTTP/1.1 200 ")
        await eventually(lambda: len(server.connections) == 4, 5, "the closed one gone")
        assert await _get(p, "/healthz", b"localhost") == 200
        assert await metric(p, "forkproxy_rejected_total", reason="admin_max_connections") == 3
