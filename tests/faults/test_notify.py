"""systemd's notification protocol, received on a real unix datagram socket as systemd
would: READY=1 once serving, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a
SIGHUP, STOPPING=1 on SIGTERM, WATCHDOG=1 at half of WATCHDOG_USEC; a unit file example
that systemd-analyze accepts."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkproxy.proxy.notify import Notifier
from tests.conftest import ROOT
from tests.faults.reload_helpers import Proc, stop_all

CONFIG = """
[server]
name = "notify-{n}"
shutdown_timeout = "5s"
[backend]
type = "process"
mode = "fork"
app = "forkproxy.backends.process.demo:create_app"
"""


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


async def messages(sock: socket.socket, until: str, timeout: float = 30.0) -> list[str]:
    """Datagrams received until one contains `until` (each as one string)."""
    loop = asyncio.get_running_loop()
    got: list[str] = []
    async with asyncio.timeout(timeout):
        while not got or until not in got[-1]:
            got.append((await loop.sock_recv(sock, 4096)).decode())
    return got


async def test_ready_reloading_stopping_in_order(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = listener
    p = Proc(CONFIG.format(n=os.getpid()), tmp_path, env={"NOTIFY_SOCKET": path})
    try:
        p.spawn()
        started = await messages(sock, "READY=1")
        await p.ready()
        assert started == [started[-1]] and started[0].startswith("READY=1\nSTATUS=serving")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        p.signal(signal.SIGHUP)
        reload = await messages(sock, "READY=1")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert len(reload) == 2, reload
        fields = dict(line.split("=", 1) for line in reload[0].splitlines())
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= after
        assert reload[1].startswith("READY=1")
        p.signal(signal.SIGTERM)
        assert await messages(sock, "STOPPING=1") == ["STOPPING=1"]
        assert await p.wait(30) == 0
    finally:
        await stop_all([p])


async def test_watchdog_pings_at_half_the_interval(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}
    p = Proc(CONFIG.format(n=os.getpid()), tmp_path, env=env)
    try:
        p.spawn()
        await messages(sock, "READY=1")
        t0 = time.monotonic()
        for _ in range(4):
            assert await messages(sock, "WATCHDOG=1", 5) == ["WATCHDOG=1"]
        # 4 pings 0.3 s apart: ~0.9-1.2 s; generous on a shared box, but not 0.6 s apart
        assert 0.6 < time.monotonic() - t0 < 2.4
    finally:
        await stop_all([p])


def test_abstract_socket_address() -> None:
    name = f"forkproxy-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        try:
            notifier.stopping()
            assert sock.recv(100) == b"STOPPING=1"
        finally:
            notifier.close()


def test_silent_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog is None
    notifier.ready()  # nothing to send to, no error


def test_watchdog_only_for_this_pid() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    theirs = Notifier(env)
    ours = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    try:
        assert theirs.watchdog is None and ours.watchdog == 1.0
    finally:
        theirs.close()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (apt package: systemd)",
)
@pytest.mark.parametrize("unit", ["forkproxy.service", "forkproxy.socket"])
def test_unit_files_verify(unit: str, tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: this environment's forkproxy
    exe = Path(sys.executable).with_name("forkproxy")
    binary = str(exe if exe.exists() else sys.executable)
    for name in ("forkproxy.service", "forkproxy.socket"):
        text = (ROOT / "examples" / name).read_text()
        text = text.replace("/usr/local/bin/forkproxy", binary)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on a setting it ignores (a bad Type=): any message is a failure
    assert result.returncode == 0 and not (result.stderr + result.stdout).strip(), (
        result.stderr + result.stdout
    )
