"""Issue 10: a client that leaves takes its request with it; a draining proxy lets
uploads in progress finish; an idle websocket tunnel ends."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ProxyProcess, eventually
from tests.proxy.hardening.conftest import exchange, metric
from tests.proxy.hardening.strict import HERE, Scripted, judge, scripted


async def test_client_gone_while_held_is_never_forwarded(tmp_path: Path) -> None:
    """Case 3: the one slot is busy; a second client sends a request and leaves. Its
    wait is cancelled at once (the queue empties) and the instance never sees it."""
    s = Scripted(tmp_path)
    slow = s.script("slow", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok", pause=1.5)
    async with scripted(tmp_path, pool={"max_concurrency": 1}) as p, asyncio.TaskGroup() as tg:

        async def depth(n: int) -> bool:
            return await metric(p, "forkproxy_queue_depth") == n

        first = b"GET " + slow.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n"
        busy = tg.create_task(exchange(p.proxy.listen_port, first, timeout=8))
        await asyncio.sleep(0.3)
        _, w = await asyncio.open_connection("127.0.0.1", p.proxy.listen_port)
        w.write(b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n")
        await w.drain()
        await eventually(lambda: depth(1), 5, "the request to be held")
        w.close()
        await eventually(lambda: depth(0), 3, "the held request to leave")
        ex = await busy
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"ok"]
        await asyncio.sleep(0.3)
        assert s.targets() == [slow]


async def test_idle_tunnel_is_closed_and_counted(tmp_path: Path) -> None:
    s = Scripted(tmp_path)
    path = s.script(
        "ws",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    head = (
        b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ) % path.encode()
    async with scripted(tmp_path, server={"tunnel_idle_timeout": "1s"}) as p:
        ex = await exchange(p.proxy.listen_port, head, timeout=8)
        assert ex.data.startswith(b"HTTP/1.1 101 ") and ex.closed
        assert 0.9 < ex.elapsed < 4  # the 1 s idle timeout, not the exchange's 8 s
        assert await metric(p, "forkproxy_upstream_errors_total", kind="tunnel_idle") == 1


async def test_sigterm_lets_an_upload_in_progress_finish(
    tmp_path: Path, proxy_process: Callable[[str], ProxyProcess]
) -> None:
    script = HERE / "scripted_instance.py"
    cmd = f'["{sys.executable}", "{script}", "{{port}}", "{tmp_path}"]'
    p = proxy_process(
        f"""
[server]
shutdown_timeout = "10s"
[pool]
min_instances = 1
readiness_path = "/ready"
[backend]
type = "process"
mode = "exec"
command = {cmd}
"""
    )
    await p.start()
    await eventually(
        lambda: bool(Scripted(tmp_path).root.joinpath("requests.jsonl").exists()) or True, 1
    )
    body = b"z" * 200_000
    head = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def upload() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        w.write(head + body[:1000])
        await w.drain()
        await asyncio.sleep(0.8)  # SIGTERM lands here
        w.write(body[1000:])
        await w.drain()
        data = await asyncio.wait_for(r.read(), 10)
        w.close()
        return data

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(upload())
        await asyncio.sleep(0.3)
        p.signal(signal.SIGTERM)
    data = task.result()
    (a,) = judge(data, ["POST"]).answers
    assert a.status == 200 and a.body == b"/up"
    (rec,) = Scripted(tmp_path).requests()
    assert len(rec["body"]) == len(body)
    assert await p.wait(15) == 0


async def test_client_reset_in_flight_releases_the_slot(tmp_path: Path) -> None:
    """Case 3, in flight: a client that resets its connection while its request is at
    the instance has it dropped; the slot goes at once to the request waiting for it."""
    s = Scripted(tmp_path)
    slow = s.script("slow", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok", pause=3.0)
    async with scripted(tmp_path, pool={"max_concurrency": 1}) as p:
        _, w = await asyncio.open_connection("127.0.0.1", p.proxy.listen_port)
        w.write(b"GET " + slow.encode() + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        await w.drain()
        await eventually(lambda: s.targets() == [slow] or None, 2, "the request to arrive")
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()  # RST
        ex = await exchange(
            p.proxy.listen_port,
            b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            timeout=4,
        )
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"/b"]
        assert ex.elapsed < 1.5  # not after the slow answer (3 s)
