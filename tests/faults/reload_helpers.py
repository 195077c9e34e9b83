"""Shared by the reload, restart and notify tests: forkproxy as a subprocess with the
environment, flags and inherited sockets systemd would give it, and clients that loop
requests and count what failed and how."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from tests.conftest import ROOT, ProxyProcess, eventually

# What systemd does between fork and exec for socket activation: the sockets become fds
# 3, 4, ... (by way of fds >= 100: a socket may already sit on one of those numbers) and
# LISTEN_PID names the process, known only there; exec keeps the pid.
_AS_SYSTEMD = """
import fcntl, os, sys
moved = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1].split(",")]
for i, fd in enumerate(moved):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class Proc(ProxyProcess):
    """`forkproxy run` on given ports; `env` is added to ours, `listen_fds` are passed
    the way systemd's socket activation does (_AS_SYSTEMD)."""

    def __init__(
        self,
        config_text: str,
        tmp: Path,
        *,
        port: int | None = None,
        admin_port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        listen_fds: tuple[socket.socket, ...] = (),
        fd_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__(config_text, tmp, port=port, admin_port=admin_port)
        self.args = args
        self.env = env or {}
        self.listen_fds = listen_fds
        self.fd_names = fd_names

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [*super().command(), *self.args]
        if self.listen_fds:
            fds = ",".join(str(s.fileno()) for s in self.listen_fds)
            cmd = [sys.executable, "-c", _AS_SYSTEMD, fds, *cmd]
        return cmd

    def popen(self, logf: IO[bytes]) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env}
        fds = [s.fileno() for s in self.listen_fds]
        if fds:
            env["LISTEN_FDS"] = str(len(fds))
            if self.fd_names:
                env["LISTEN_FDNAMES"] = ":".join(self.fd_names)
        return subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, pass_fds=fds
        )

    async def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        await self.ready(timeout)

    async def wait_log(self, text: str, timeout: float = 30.0, count: int = 1) -> None:
        await eventually(lambda: self.logged().count(text) >= count, timeout, repr(text))

    async def reload(self, timeout: float = 60.0) -> None:
        """SIGHUP, and wait until the proxy says that reload ended (done or not)."""
        before = self.logged().count("SIGHUP: reloading")
        ends = self._reload_ends()
        self.signal(signal.SIGHUP)
        await self.wait_log("SIGHUP: reloading", timeout, before + 1)
        await eventually(lambda: self._reload_ends() > ends, timeout, "the reload to end")

    def _reload_ends(self) -> int:
        text = self.logged()
        return sum(text.count(s) for s in ("reload done", "reload failed", "still running the"))


async def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.signal(signal.SIGTERM)
            try:
                await p.wait(20)
            except AssertionError:
                p.kill()


@dataclass
class Tally:
    ok: int = 0
    refused: int = 0  # the TCP connect itself was refused
    failed: list[str] = field(default_factory=list)  # anything else that was not a 200
    bodies: list[str] = field(default_factory=list)  # in the order they were answered
    # (start, end) of each stretch of refused or failed requests, monotonic seconds
    gaps: list[tuple[float, float]] = field(default_factory=list)
    slowest: float = 0.0  # seconds, of the successful requests
    _bad_since: float | None = None

    def good(self, body: str, took: float) -> None:
        self.ok += 1
        self.slowest = max(self.slowest, took)
        self.bodies.append(body)
        if self._bad_since is not None:
            self.gaps.append((self._bad_since, time.monotonic()))
            self._bad_since = None

    def bad(self, what: str, *, refused: bool = False) -> None:
        if refused:
            self.refused += 1
        else:
            self.failed.append(what)
        if self._bad_since is None:
            self._bad_since = time.monotonic()

    @property
    def errors(self) -> int:
        return self.refused + len(self.failed)

    @property
    def longest_gap(self) -> float:
        return max((b - a for a, b in self.gaps), default=0.0)


async def fresh_connections(port: int, path: str, stop: asyncio.Event, tally: Tally) -> None:
    """One request per new TCP connection (raw, so a refused connect is told apart)."""
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(30):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(request)
                    raw = await reader.read()
                finally:
                    writer.close()
        except ConnectionRefusedError:
            tally.bad("refused", refused=True)
            await asyncio.sleep(0.005)
            continue
        except (OSError, TimeoutError) as exc:
            tally.bad(repr(exc))
            continue
        head, _, body = raw.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 200"):
            tally.good(body.decode(errors="replace"), time.monotonic() - t0)
        else:
            tally.bad(head.split(b"\r\n", 1)[0].decode(errors="replace"))


async def keep_alive(url: str, stop: asyncio.Event, tally: Tally) -> None:
    """Requests on one pooled keep-alive connection (aiohttp reuses it)."""
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                async with s.get(url) as r:
                    body = await r.text()
                    if r.status == 200:
                        tally.good(body, time.monotonic() - t0)
                    else:
                        tally.bad(f"{r.status} {body.strip()}")
            except aiohttp.ClientConnectorError as exc:
                refused = isinstance(exc.os_error, ConnectionRefusedError)
                tally.bad(repr(exc), refused=refused)
                await asyncio.sleep(0.005)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.bad(repr(exc))


class Load:
    """Clients looping requests until stopped: `fresh` on new connections, `kept` on
    keep-alive ones."""

    def __init__(self, port: int, path: str = "/", *, fresh: int = 2, kept: int = 2) -> None:
        self.stop = asyncio.Event()
        self.fresh = Tally()
        self.kept = Tally()
        url = f"http://127.0.0.1:{port}{path}"
        self._coros = [fresh_connections(port, path, self.stop, self.fresh) for _ in range(fresh)]
        self._coros += [keep_alive(url, self.stop, self.kept) for _ in range(kept)]
        self._group: asyncio.Future[list[None]] | None = None

    async def __aenter__(self) -> Load:
        self._group = asyncio.gather(*self._coros)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.stop.set()
        assert self._group is not None
        await self._group

    @property
    def bodies(self) -> list[str]:
        return self.fresh.bodies + self.kept.bodies

    def summary(self) -> str:
        return (
            f"fresh: {self.fresh.ok} ok, {self.fresh.refused} refused, "
            f"{len(self.fresh.failed)} failed {self.fresh.failed[:5]}, "
            f"longest gap {self.fresh.longest_gap * 1000:.0f} ms, "
            f"slowest answer {self.fresh.slowest * 1000:.0f} ms; "
            f"keep-alive: {self.kept.ok} ok, {self.kept.refused} refused, "
            f"{len(self.kept.failed)} failed {self.kept.failed[:5]}, "
            f"longest gap {self.kept.longest_gap * 1000:.0f} ms, "
            f"slowest answer {self.kept.slowest * 1000:.0f} ms"
        )

    async def until(self, ok: int, timeout: float = 30.0) -> None:
        """Wait until `ok` more requests succeeded (the load really runs)."""
        target = self.fresh.ok + self.kept.ok + ok
        await eventually(lambda: self.fresh.ok + self.kept.ok >= target, timeout, "requests")
