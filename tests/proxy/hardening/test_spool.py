"""Request bodies spooled to disk (server.body_spool_size): a client uploading a body
larger than the in-memory read-ahead, slowly, holds a connection and disk, never an
instance slot; the instance receives exactly the bytes the client framed, in order,
whether the body was spooled whole, spooled in part then streamed (it grew past the
spool size, or the disk budget was spent), or streamed; nothing is left on disk or in
the budget when a client goes away mid-upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from forkproxy.proxy.http.chunks import Budget
from forkproxy.proxy.http.spool import Spool
from tests.conftest import Running, eventually
from tests.proxy.hardening.conftest import exchange, metric, recorder, seen

READ_AHEAD = {"body_buffer_size": "4KiB"}
ONE_SLOT = {"max_instances": 1, "max_concurrency": 1, "hold_timeout": "1s"}


def get(path: str) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode()


def body(n: int) -> bytes:
    return bytes(range(251)) * (n // 251) + bytes(range(n % 251))


def framed(data: bytes, chunked: bool, piece: int) -> tuple[bytes, list[bytes]]:
    """The request head and its body's pieces as sent."""
    if not chunked:
        head = (
            b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % len(data)
        )
        return head, [data[i : i + piece] for i in range(0, len(data), piece)]
    head = (
        b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    parts = [
        b"%x\r\n%b\r\n" % (len(data[i : i + piece]), data[i : i + piece])
        for i in range(0, len(data), piece)
    ]
    parts[-1] += b"0\r\n\r\n"
    return head, parts


def unlinked() -> set[str]:
    """This process's descriptors open on unlinked files in the temp directory (pytest's
    own output capture has some: compare with a set taken before)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()) and target.endswith("(deleted)"):
            found.add(f"{fd} {target}")
    return found


@pytest.fixture(autouse=True)
def before() -> set[str]:
    return unlinked()


def spool_fds(before: set[str]) -> set[str]:
    return unlinked() - before


async def settled(p: Running, before: set[str]) -> None:
    await eventually(lambda: p.proxy.http.spooled.used == 0, 5.0, "the disk budget back at 0")
    assert p.proxy.http.buffered.used == 0
    await eventually(lambda: not spool_fds(before), 5.0, "no spool file left open")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_slow_large_upload_is_spooled_and_holds_no_slot(
    chunked: bool, before: set[str]
) -> None:
    """300 kB at 100 kB/s (well above body_min_rate) takes 3 s; the pool has one slot and
    a 1 s hold timeout, so a body streamed while holding the slot would turn the other
    clients away with 504. Spooled, they are all answered, and then so is the upload."""
    data = body(300_000)
    async with recorder(server=READ_AHEAD, pool=ONE_SLOT) as p:
        port = p.proxy.listen_port
        head, parts = framed(data, chunked, 10_000)
        async with asyncio.TaskGroup() as tg:
            upload = tg.create_task(exchange(port, head, *parts, pause=0.1, timeout=15))
            await asyncio.sleep(0.5)
            assert p.proxy.http.spooled.used > 0  # on disk while it arrives
            others = [await exchange(port, get(f"/other{i}"), timeout=3) for i in range(4)]
            assert [o.statuses for o in others] == [[200]] * 4
            assert not upload.done()  # still uploading while they were served
        ex = upload.result()
        (resp,) = ex.responses
        got = seen(resp)
        assert resp.status == 200
        assert (got["body_len"], got["body_sha256"]) == (
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
        await settled(p, before)


@pytest.mark.parametrize(
    ("server", "chunked"),
    [
        ({}, False),  # spooled whole
        ({"body_spool_size": "64KiB"}, True),  # grows past the spool size: spooled, then streamed
        ({"body_spool_size": "64KiB"}, False),  # declared larger than it: streamed
        ({"body_spool_total": "16KiB"}, True),  # the disk budget spent: spooled, then streamed
        ({"body_spool_size": "0"}, True),  # spooling off
    ],
    ids=["whole", "past-size", "declared-past-size", "past-budget", "off"],
)
async def test_the_instance_gets_exactly_the_body_sent(
    server: dict[str, Any], chunked: bool, before: set[str]
) -> None:
    data = body(200_003)
    async with recorder(server={**READ_AHEAD, **server}) as p:
        head, parts = framed(data, chunked, 7_001)
        ex = await exchange(p.proxy.listen_port, head, *parts, pause=0.005, timeout=15)
        (resp,) = ex.responses
        got = seen(resp)
        assert resp.status == 200, ex.data[:300]
        assert (got["body_len"], got["body_sha256"]) == (
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
        await settled(p, before)


async def test_a_client_gone_mid_upload_leaves_nothing_behind(before: set[str]) -> None:
    async with recorder(server=READ_AHEAD) as p:
        head, parts = framed(body(1_000_000), False, 50_000)
        _, w = await asyncio.open_connection("127.0.0.1", p.proxy.listen_port)
        w.write(head)
        for part in parts[:6]:
            w.write(part)
            await w.drain()
            await asyncio.sleep(0.05)
        await eventually(lambda: p.proxy.http.spooled.used > 0, 5.0, "bytes on disk")
        w.transport.abort()
        await settled(p, before)
        ok = await exchange(p.proxy.listen_port, get("/after"), timeout=3)
        assert ok.statuses == [200]


async def test_a_disk_that_cannot_take_the_body_is_a_counted_503(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, before: set[str]
) -> None:
    """The spool cannot be opened ($TMPDIR gone): the client gets 503 and the connection
    closes, the reason is counted, nothing is held, and the next request is served."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    async with recorder(server=READ_AHEAD) as p:
        head, parts = framed(body(100_000), False, 20_000)
        # in pieces: a body already whole when it is read ahead is never spooled
        ex = await exchange(p.proxy.listen_port, head, *parts, pause=0.05, timeout=5)
        assert ex.statuses == [503] and ex.closed, ex.data[:300]
        assert await metric(p, "forkproxy_rejected_total", reason="spool_failed") == 1
        await settled(p, before)
        ok = await exchange(p.proxy.listen_port, get("/after"), timeout=3)
        assert ok.statuses == [200]


async def test_spool_reads_back_what_was_appended_and_closes_under_a_running_write(
    before: set[str],
) -> None:
    budget = Budget(1 << 20)
    spool = Spool(budget)
    pieces = [os.urandom(100_000) for _ in range(3)]
    for piece in pieces:
        await spool.append(piece)
    assert budget.used == 300_000 and spool.fits(700_000, 1 << 30)
    assert not spool.fits(1, 300_000) and not spool.fits(800_000, 1 << 30)
    back = b""
    while data := await spool.read():
        back += data
    assert back == b"".join(pieces)
    spool.close()
    assert budget.used == 0 and not spool_fds(before)

    # closed while a write runs on its thread (the request was cancelled): the file is
    # closed when the write ends, never under it
    spool = Spool(budget)
    await spool.append(b"x")
    big = os.urandom(8 << 20)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):  # cancelled once the write is on its thread
            await spool.append(big)
    spool.close()
    assert budget.used == 0
    await eventually(lambda: not spool_fds(before), 5.0, "the spool file closed")
    with pytest.raises(ConnectionResetError):
        await spool.append(b"late")
