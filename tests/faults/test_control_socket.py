"""The fork template's control socket under a flood: every sender finishes, none waits
forever (one writer per socket; each message bounded by a timeout)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from forkproxy.backends.process import _template_client
from forkproxy.backends.process._frames import ControlTimeout, FrameWriter
from forkproxy.backends.process._messages import SignalInstance
from tests.backends.contract import recording_context
from tests.backends.process.helpers import process_config


async def test_a_thousand_concurrent_sends_over_the_real_template_socket_all_complete() -> None:
    ctx = recording_context(f"faults-{uuid.uuid4().hex[:8]}", start_timeout=20.0)
    config = process_config(mode="fork", app="tests.faults.apps:tiny_app")
    tpl = await _template_client.spawn(config, ctx)
    try:
        # "signal" for ids the template does not know: it reads and drops each one, so
        # the socket fills and most senders have to wait for room.
        sends = [
            asyncio.ensure_future(  # noqa: TID251 - all awaited below
                _template_client.send(tpl, SignalInstance(f"none-{i}", 0))
            )
            for i in range(1000)
        ]
        t0 = time.monotonic()
        done, pending = await asyncio.wait(sends, timeout=30)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert not pending, f"{len(pending)} of 1000 sends never finished"
        assert all(t.exception() is None for t in done)
        assert time.monotonic() - t0 < 30
        assert len(tpl.writer) == 0
    finally:
        await _template_client.kill(tpl, 2.0)


async def test_a_send_to_a_peer_that_reads_nothing_times_out_and_is_never_sent_late() -> None:
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    writer = FrameWriter(ours)
    try:
        sent = 0
        with pytest.raises(ControlTimeout):
            while True:  # fill the socket: the peer never reads
                await writer.send(b"x" * 512, [], 0.2)
                sent += 1
        assert sent > 0
        # the frame that timed out is dropped, not delivered once there is room
        theirs.setblocking(False)
        got = 0
        while True:
            try:
                theirs.recv(1024)
            except BlockingIOError:
                break
            got += 1
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            theirs.recv(1024)
        assert got == sent
        await writer.send(b"after", [], 1.0)
        assert theirs.recv(1024) == b"after"
    finally:
        writer.close()
        ours.close()
        theirs.close()
