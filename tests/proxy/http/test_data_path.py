"""Forwarding through real sockets: bodies streamed both ways, framing, headers,
raw paths, websockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
from collections.abc import AsyncIterator

import aiohttp

from tests.conftest import run_proxy

MB = 1024 * 1024


async def _chunks(total: int, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


def _sha(total: int, size: int = 256 * 1024) -> str:
    h = hashlib.sha256()
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        h.update(piece)
    return h.hexdigest()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_large_bodies_stream_both_ways_with_bounded_memory() -> None:
    total = 100 * MB
    async with run_proxy() as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        before = _rss_mb()
        # upload, chunked (no Content-Length)
        async with p.session.post(p.url + "/count", data=_chunks(total)) as r:
            assert r.status == 200
            got = await r.json()
        assert got["bytes"] == total and got["sha256"] == _sha(total)
        # upload with Content-Length
        headers = {"Content-Length": str(total)}
        async with p.session.post(p.url + "/count", data=_chunks(total), headers=headers) as r:
            assert (await r.json())["bytes"] == total
        # download
        n = 0
        async with p.session.get(p.url + f"/bytes?n={total}") as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                n += len(chunk)
        assert n == total
        # the proxy (in this process) never held a body in memory
        assert _rss_mb() - before < 60, f"RSS grew {_rss_mb() - before:.0f} MB"


async def test_echo_round_trip_and_content_length_framing() -> None:
    async with run_proxy() as p:
        payload = b"x" * 300_000
        async with p.session.post(p.url + "/echo", data=payload) as r:
            assert r.status == 200
            assert await r.read() == payload
        async with p.session.get(p.url + "/") as r:
            assert r.headers.get("Content-Length") is not None
            assert "Transfer-Encoding" not in r.headers
        async with p.session.head(p.url + "/") as r:
            assert r.status == 200
            assert await r.read() == b""


async def test_forwarding_headers_and_hop_by_hop() -> None:
    async with run_proxy() as p:
        headers = {
            "X-Forwarded-For": "6.6.6.6",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "secret",
            "X-Keep": "yes",
            "Host": "app.example",
        }
        async with p.session.get(p.url + "/headers", headers=headers) as r:
            seen = {k.lower(): v for k, v in (await r.json())["headers"].items()}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "app.example"
        assert seen["host"] == "app.example"
        assert seen["x-keep"] == "yes"
        assert "x-drop-me" not in seen
        # the proxy adds no client-library headers of its own
        reader, writer = await asyncio.open_connection("127.0.0.1", p.proxy.listen_port)
        writer.write(b"POST /headers HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        writer.write(b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await reader.read()
        writer.close()
        for part in data.split(b"HTTP/1.1 200 OK")[1:]:
            body = part.partition(b"\r\n\r\n")[2]
            sent = {k.lower() for k in json.loads(body[: body.rindex(b"}") + 1])["headers"]}
            assert not sent & {"user-agent", "accept", "accept-encoding", "content-type"}, sent


async def test_raw_path_reaches_the_app_unmodified() -> None:
    async with run_proxy() as p:
        raw = "/headers/a/../b/%2e%2e/x%2Fy?q=%20&r=a+b"
        reader, writer = await asyncio.open_connection("127.0.0.1", p.proxy.listen_port)
        writer.write(f"GET {raw} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["path_qs"] == raw


async def test_websocket_outlives_idle_ttl_and_keeps_instance_busy() -> None:
    async with run_proxy(pool={"idle_ttl": "200ms"}) as p:
        async with p.session.ws_connect(p.url + "/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
            await asyncio.sleep(0.8)  # 4x the idle TTL
            (inst,) = await p.instances()
            assert inst["in_flight"] == 1
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive(timeout=5)).data == b"\x00\x01"
            await ws.close()

        async def reaped() -> bool:
            return await p.instances() == []

        from tests.conftest import eventually

        await eventually(reaped, 5, "instance reaped after the websocket closed")


async def test_post_is_not_lost_when_first_instance_is_unreachable() -> None:
    """A connect failure happens before any byte is sent: retried on another instance."""
    async with run_proxy() as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        (slot,) = list(p.proxy.pool._slots.values())
        assert slot.instance is not None
        # stop the instance behind the pool's back: it stays READY in the pool's view
        await p.proxy.backend.stop(slot.instance, "test")
        async with p.session.post(p.url + "/count", data=b"abc") as r:
            assert r.status == 200
            assert (await r.json())["bytes"] == 3


async def test_client_sees_aborted_connection_when_instance_dies_mid_body() -> None:
    async with run_proxy() as p:
        async with p.session.get(p.url + "/") as r:
            pid = int(r.headers["X-Pid"])
        import os
        import signal

        async with p.session.get(p.url + "/bytes?n=200000000") as r:
            assert r.status == 200
            await r.content.read(1024)
            os.kill(pid, signal.SIGKILL)
            try:
                async for _ in r.content.iter_any():
                    pass
            except aiohttp.ClientPayloadError:
                pass
            else:
                raise AssertionError("truncated body looked complete")


CLOSE_DELIMITED = """
import asyncio, sys
async def h(r, w):
    await r.readuntil(b"\\r\\n\\r\\n")
    w.write(b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n" + b"x" * 100000 + b"end")
    await w.drain()
    w.close()
async def main():
    s = await asyncio.start_server(h, "127.0.0.1", int(sys.argv[1]))
    async with s:
        await s.serve_forever()
asyncio.run(main())
"""


async def test_close_delimited_upstream_body_is_forwarded_whole() -> None:
    import sys

    cmd = [sys.executable, "-c", CLOSE_DELIMITED, "{port}"]
    async with run_proxy(backend={"mode": "exec", "command": cmd}) as p:
        for _ in range(2):
            async with p.session.get(p.url + "/") as r:
                assert r.status == 200
                body = await r.read()
            assert len(body) == 100003 and body.endswith(b"end")
