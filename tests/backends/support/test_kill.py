"""The one kill sequence (forkproxy.backends.support.kill) on real processes: a process that obeys
SIGTERM is not killed; one that ignores it is SIGKILLed after the grace, and the log says so."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import pytest

from forkproxy.backends.support.kill import terminate, within

log = logging.getLogger("test.kill")
IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(60)"
)
OBEYS_TERM = "import sys, time; print('up', flush=True); time.sleep(60)"


async def spawn(script: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"up\n"  # its SIGTERM disposition is set
    return proc


async def test_sigterm_obeyed_within_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    proc = await spawn(OBEYS_TERM)
    sent: list[int] = []

    def send(sig: int) -> None:
        sent.append(sig)
        os.kill(proc.pid, sig)

    with caplog.at_level(logging.WARNING, "test.kill"):
        assert await terminate("obedient", send, lambda s: within(s, proc.wait()), 5.0, log)
    assert sent == [signal.SIGTERM]
    assert proc.returncode == -signal.SIGTERM
    assert caplog.records == []


async def test_grace_expiry_sends_sigkill_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    proc = await spawn(IGNORES_TERM)
    sent: list[int] = []

    async def send(sig: int) -> None:  # an awaitable send, like the fork template's pipe
        sent.append(sig)
        os.kill(proc.pid, sig)

    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, "test.kill"):
        assert await terminate("stubborn (pid 1)", send, lambda s: within(s, proc.wait()), 0.3, log)
    assert 0.3 <= time.monotonic() - t0 < 3.0
    assert sent == [signal.SIGTERM, signal.SIGKILL]
    assert proc.returncode == -signal.SIGKILL
    (record,) = caplog.records
    assert record.getMessage() == (
        "stubborn (pid 1): grace period (0.3s) expired after SIGTERM; sending SIGKILL"
    )


async def test_within_leaves_a_future_running() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert not await within(0.01, fut)
    assert not fut.cancelled()  # others may still wait for this exit
    fut.set_result(None)
    assert await within(0.01, fut)
