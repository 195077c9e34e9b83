"""Restarts without refused connections: a successor bound to the same port with
SO_REUSEPORT while the old proxy drains, or listening sockets held by systemd (socket
activation) across the restart. A plain restart, for contrast, refuses connections."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forkproxy.proxy import handover
from tests.conftest import free_port
from tests.faults.reload_helpers import Load, Proc, stop_all

CONFIG = """
[server]
name = "restart-{n}"
shutdown_timeout = "20s"
[pool]
idle_ttl = "60s"
[backend]
type = "process"
mode = "fork"
app = "forkproxy.backends.process.demo:create_app"
"""

MakeProc = Callable[..., Proc]


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[MakeProc]:
    made: list[Proc] = []

    def make(**kwargs: Any) -> Proc:
        p = Proc(CONFIG.format(n=f"{os.getpid()}-{len(made)}"), tmp_path, **kwargs)
        made.append(p)
        return p

    yield make
    await stop_all(made)


@pytest.fixture
def held() -> Iterator[tuple[socket.socket, socket.socket]]:
    """What systemd's socket unit holds: a listener and an admin listener."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        socks.append(s)
    yield socks[0], socks[1]
    for s in socks:
        s.close()


def report(what: str, load: Load) -> None:
    print(f"\n{what}: {load.summary()}")  # the numbers docs/reload-and-restart.md quotes


async def test_plain_restart_refuses_connections(procs: MakeProc) -> None:
    """The contrast: without handover the port is closed between the two processes, and
    the successor cannot bind it while the old one still runs."""
    a = procs()
    await a.start()
    early = procs(port=a.port)
    early.spawn()
    assert await early.wait(30) == 3
    assert "address already in use" in early.logged()
    async with Load(a.port, "/", fresh=2, kept=2) as load:
        await load.until(40)
        a.signal(signal.SIGTERM)
        assert await a.wait(30) == 0
        b = procs(port=a.port, admin_port=a.admin_port)
        await b.start()
        await load.until(40)
    report("plain restart", load)
    assert load.fresh.refused > 0


async def test_reuse_port_successor_takes_over_with_no_error(procs: MakeProc) -> None:
    a = procs(args=("--reuse-port",))
    await a.start()
    async with Load(a.port, "/", fresh=2, kept=2) as load:
        await load.until(40)
        b = procs(port=a.port, admin_port=a.admin_port, args=("--reuse-port",))
        b.spawn()  # both ports are shared: B's readiness is in its log, not its /readyz
        await b.wait_log("forkproxy listening on", 30)
        a.signal(signal.SIGTERM)
        assert await a.wait(30) == 0
        await load.until(40)
    report("reuse_port handover", load)
    assert load.fresh.errors == 0 and load.kept.errors == 0, load.summary()
    assert b.proc is not None and b.proc.poll() is None


async def test_socket_activation_restart_refuses_nothing(
    procs: MakeProc, held: tuple[socket.socket, socket.socket]
) -> None:
    listener, admin = held
    port, admin_port = listener.getsockname()[1], admin.getsockname()[1]
    # the configured addresses are not used: systemd's sockets are
    unused = {"port": free_port(), "admin_port": free_port()}
    a = procs(listen_fds=(listener, admin), **unused)
    a.spawn()
    a.admin_port = admin_port
    await a.ready()
    async with Load(port, "/", fresh=2, kept=2) as load:
        await load.until(40)
        a.signal(signal.SIGTERM)
        assert await a.wait(30) == 0
        # between the two processes connections wait in the held socket's backlog
        b = procs(listen_fds=(listener, admin), **unused)
        b.spawn()
        b.admin_port = admin_port
        await b.ready()
        await load.until(40)
    report("socket activation restart", load)
    assert load.fresh.errors == 0 and load.kept.errors == 0, load.summary()
    assert "the socket systemd passed" in b.logged()


async def test_socket_activation_admin_fd_by_name(
    procs: MakeProc, held: tuple[socket.socket, socket.socket]
) -> None:
    """LISTEN_FDNAMES: the fd named `admin` is the admin listener whatever its place."""
    listener, admin = held
    p = procs(listen_fds=(admin, listener), fd_names=("admin", "web"))
    p.spawn()
    p.admin_port = admin.getsockname()[1]
    p.port = listener.getsockname()[1]
    await p.ready()
    async with Load(p.port, "/", fresh=1, kept=0) as load:
        await load.until(5)
    assert load.fresh.errors == 0


def test_listen_fds_for_another_pid_are_ignored() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "web"}
    assert handover.from_systemd(env) == handover.Inherited()
    assert env == {}  # removed either way: children must not take them for theirs


async def test_socket_activation_with_the_listener_only(
    procs: MakeProc, held: tuple[socket.socket, socket.socket]
) -> None:
    """One fd: it is the data listener; the admin API opens server.admin itself."""
    listener, _ = held
    p = procs(listen_fds=(listener,))
    await p.start()  # ready on the configured admin port
    p.port = listener.getsockname()[1]
    async with Load(p.port, "/", fresh=1, kept=1) as load:
        await load.until(5)
    assert load.fresh.errors == 0 and load.kept.errors == 0, load.summary()
