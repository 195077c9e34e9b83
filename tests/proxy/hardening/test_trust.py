"""Issue 21's attacks, each against a real proxy and a real instance over real sockets:
CONNECT with a body, late bytes after a HEAD answer, 1xx with a body and out-of-range
status codes, slow uploads holding instance slots, 1-byte chunk floods, and the memory
held by requests waiting for an instance."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from tests.proxy.hardening.conftest import exchange, metric, raw_instance, recorder, seen
from tests.proxy.hardening.strict import Scripted, judge, scripted

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


def get(path: str) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode()


@pytest.mark.parametrize("target", [b"/x", b"http://t/x"], ids=["origin-form", "absolute-form"])
async def test_connect_with_a_body_is_answered_never_forwarded(
    tmp_path: Path, target: bytes
) -> None:
    """aiohttp and uvicorn take CONNECT as a tunnel and ignore its Content-Length: its
    body would be a second request there. The proxy answers 501 and closes."""
    s = Scripted(tmp_path)
    async with scripted(tmp_path) as p:
        attack = b"CONNECT %b HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (
            target,
            len(SMUGGLED),
            SMUGGLED,
        )
        ex = await exchange(p.proxy.listen_port, attack, timeout=3)
        assert ex.statuses == [501] and ex.closed, ex.data
        victim = await exchange(p.proxy.listen_port, get("/victim"), timeout=3)
        assert [a.body for a in judge(victim.data, ["GET"]).answers] == [b"/victim"]
    assert s.targets() == ["/victim"]  # neither the CONNECT nor its body reached it


async def test_late_bytes_after_a_head_answer_reach_no_other_client(tmp_path: Path) -> None:
    """waitress sends an app's body to HEAD. An instance that writes a whole response
    200 ms after the head of its HEAD answer must not answer the next clients."""
    s = Scripted(tmp_path)
    late = s.script(
        "late",
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED",
        pause=0.2,
    )
    async with scripted(tmp_path) as p:
        port = p.proxy.listen_port
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"HEAD %b HTTP/1.1\r\nHost: t\r\n\r\n" % late.encode())
            async with asyncio.timeout(3):
                assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            w.close()
            # the victims go out at once, while the instance's late answer is due
            victims = await asyncio.gather(
                *(exchange(port, get(f"/victim{i}"), timeout=2) for i in range(5))
            )
            for i, v in enumerate(victims):
                assert b"SMUGGLED" not in v.data
                assert [a.body for a in judge(v.data, ["GET"]).answers] == [f"/victim{i}".encode()]


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        (
            "1xx-with-body",
            b"HTTP/1.1 199 X\r\nContent-Length: 5\r\n\r\nabcde"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "1xx-chunked",
            b"HTTP/1.1 103 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        ("status-600", b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok"),
        ("status-099", b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok"),
        ("status-000", b"HTTP/1.1 000 X\r\nContent-Length: 2\r\n\r\nok"),
    ],
)
async def test_a_1xx_with_a_body_or_a_status_out_of_range_is_a_502(
    tmp_path: Path, name: str, answer: bytes
) -> None:
    s = Scripted(tmp_path)
    path = s.script(name, answer)
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, get(path), timeout=2)
        assert ex.statuses == [502], ex.data
        assert b"abcde" not in ex.data
        assert b"HTTP/1.1 0 " not in ex.data and b"HTTP/1.1 600" not in ex.data
        # the instance stays usable for the next client, on a fresh connection
        ex = await exchange(p.proxy.listen_port, get("/next"), timeout=2)
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"/next"]


async def test_slow_uploads_with_expect_continue_hold_no_instance_slot() -> None:
    """Expect: 100-continue used to skip the read-ahead: two clients dribbling a byte at
    a time held both slots, and everyone else got 504. A body up to body_buffer_size is
    now read (after the proxy's own 100 Continue) before a slot is taken."""
    pool = {"max_instances": 2, "max_concurrency": 1, "hold_timeout": "3s"}
    async with recorder(pool=pool) as p:
        port = p.proxy.listen_port
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for r, w in slow:
            w.write(
                b"POST /h HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            async with asyncio.timeout(2):  # the proxy says 100 itself, at once
                assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        for _ in range(3):
            for _, w in slow:
                w.write(b"x")
            await asyncio.sleep(0.3)
        t0 = time.monotonic()
        for i in range(4):
            ex = await exchange(port, get(f"/other{i}"), timeout=3)
            assert ex.statuses == [200], ex.data
        assert time.monotonic() - t0 < 2.5
        for r, w in slow:  # they are served once their bodies are whole
            w.write(b"x" * 997)
            async with asyncio.timeout(5):
                assert (await r.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
            w.close()


@pytest.mark.slow
async def test_a_large_slow_upload_is_cut_by_the_default_minimum_rate() -> None:
    """A body larger than the read-ahead streams while it holds a slot; with no setting
    of its own it must keep the default minimum rate (on by default) or get 408, and the
    slot is free again for others."""
    server = {"body_buffer_size": "4KiB", "body_timeout": "3s"}
    pool = {"max_instances": 1, "max_concurrency": 1, "hold_timeout": "20s"}
    async with recorder(server=server, pool=pool) as p:
        port = p.proxy.listen_port
        head = b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n"
        ex = await exchange(port, head, b"x" * 4096, *[b"x" * 10] * 40, pause=0.5, timeout=15)
        assert ex.statuses == [408] and ex.closed
        assert 5 <= ex.elapsed < 9, ex.elapsed
        ok = await exchange(port, get("/after"), timeout=3)
        assert ok.statuses == [200]


async def test_one_byte_chunks_are_refused_before_they_cost_the_loop(tmp_path: Path) -> None:
    """600,000 one-byte chunks cost about 2.7 s of CPU in one loop. The chunk count is
    bounded by the body's size, so the flood ends at its 65th chunk with 400, and the
    instance never sees the request."""
    async with raw_instance(tmp_path / "log", pool={"min_instances": 1}) as p:
        port = p.proxy.listen_port
        flood = b"1\r\nx\r\n" * 600_000
        head = b"POST /flood HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        t0 = time.monotonic()
        got, other = await asyncio.gather(
            exchange(port, head + flood[: 1 << 20], flood[1 << 20 :], timeout=5),
            exchange(port, get("/ok"), timeout=5),
        )
        assert got.statuses == [400] and got.closed, got.data[:200]
        assert other.statuses == [200]
        assert time.monotonic() - t0 < 3
    log = (tmp_path / "log").read_bytes() if (tmp_path / "log").exists() else b""
    assert b"/flood" not in log


async def test_chunks_of_ordinary_size_pass_and_arrive_whole() -> None:
    async with recorder() as p:
        data = bytes(range(200)) * 2000
        parts = b"".join(
            b"%x\r\n%b\r\n" % (200, data[i : i + 200]) for i in range(0, len(data), 200)
        )
        head = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        ex = await exchange(p.proxy.listen_port, head + parts + b"0\r\n\r\n", timeout=5)
        (resp,) = ex.responses
        got = seen(resp)
        assert got["body_len"] == len(data)
        assert got["body_sha256"] == hashlib.sha256(data).hexdigest()


async def test_memory_held_by_waiting_requests_has_one_bound(tmp_path: Path) -> None:
    """Requests waiting for an instance hold their bodies; together they may hold at
    most body_buffer_total, and the ones beyond get 503 with Retry-After. When the
    waiting clients leave, the memory is given back and new bodies are taken again."""
    server = {"body_buffer_total": "1MiB", "upstream_header_timeout": "30s"}
    pool = {"max_instances": 1, "max_concurrency": 1, "hold_timeout": "20s", "min_instances": 1}
    async with raw_instance(tmp_path / "log", server=server, pool=pool) as p:
        port = p.proxy.listen_port
        _, hog_w = await asyncio.open_connection("127.0.0.1", port)
        hog_w.write(get("/hang"))  # holds the only slot
        await asyncio.sleep(0.3)
        body = b"b" * 200_000
        post = b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        waiting = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
        for _, w in waiting:
            w.write(post)
        await asyncio.sleep(1.0)
        refused = 0
        for r, _ in waiting:
            try:
                async with asyncio.timeout(0.2):
                    line = await r.readuntil(b"\r\n\r\n")
            except TimeoutError:
                continue
            assert line.startswith(b"HTTP/1.1 503"), line
            assert b"Retry-After: 1" in line
            refused += 1
        # 1 MiB holds five bodies of 200 kB: the other seven are refused
        assert refused == 7, refused
        assert await metric(p, "forkproxy_rejected_total", reason="buffered_bytes") >= 7
        for _, w in waiting:
            w.close()
        await asyncio.sleep(0.5)
        # the bytes of the clients that left were given back: five fit again
        again = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, w in again:
            w.write(post)
        await asyncio.sleep(1.0)
        for r, w in again:
            with pytest.raises(TimeoutError):  # waiting for the slot, not refused
                async with asyncio.timeout(0.2):
                    await r.readuntil(b"\r\n\r\n")
            w.close()
        hog_w.close()
