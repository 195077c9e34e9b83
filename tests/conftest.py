"""Shared test helpers: run a real forkproxy (in-process or as a subprocess) on
loopback ports, and wait for conditions with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from forkproxy.loadtest.run.procs import port_taken
from forkproxy.proxy.config import parse
from forkproxy.proxy.server import Proxy

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback TCP port free a moment ago: the tests' one helper for it (the vcsim
    harness and the docker tests use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.05)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


def proxy_config(**tables: dict[str, Any]) -> dict[str, Any]:
    """A config dict on free loopback ports with the fork backend and a unique pool name."""
    base = {
        "server": {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "name": f"test-{os.getpid()}-{time.monotonic_ns() % 10**9}",
            "shutdown_timeout": "10s",
        },
        "pool": {"idle_ttl": "60s", "start_timeout": "10s", "tick": "50ms"},
        "backend": {"type": "process", "mode": "fork", "app": "examples.app:create_app"},
    }
    return _merge(base, tables)


class Running:
    def __init__(self, proxy: Proxy, session: aiohttp.ClientSession) -> None:
        self.proxy = proxy
        self.session = session

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.listen_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.proxy.admin_port}"

    async def instances(self) -> list[dict[str, Any]]:
        async with self.session.get(self.admin + "/instances") as r:
            data = await r.json()
        return list(data["instances"])


@asynccontextmanager
async def run_proxy(**tables: dict[str, Any]) -> AsyncIterator[Running]:
    cfg = parse(proxy_config(**tables))
    proxy = Proxy(cfg)
    await proxy.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(proxy, session)
    finally:
        await proxy.stop()


class ProxyProcess:
    """forkproxy as a real subprocess (for signals: SIGTERM drain, SIGKILL). Subclasses
    change the command line and what the process inherits (tests/faults/reload_helpers)."""

    def __init__(
        self, config_text: str, tmp: Path, *, port: int | None = None, admin_port: int | None = None
    ) -> None:
        self._text = config_text
        self._tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Callable[[], None] | None = None  # e.g. a lower RLIMIT_NOFILE
        self._fixed_ports = port is not None
        self._pick_ports(port, admin_port)

    def _pick_ports(self, port: int | None = None, admin_port: int | None = None) -> None:
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        # two processes given the same ports (a restart's successor) are named apart
        name = (
            f"proxy-{self.port}-{time.monotonic_ns()}"
            if self._fixed_ports
            else f"proxy-{self.port}"
        )
        self.config = self._tmp / f"{name}.toml"
        self.config.write_text(self._text)
        self.log = self.config.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "forkproxy",
            "run",
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin",
            f"127.0.0.1:{self.admin_port}",
        ]

    def popen(self, logf: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )

    def spawn(self) -> None:
        """Start it; ready() waits for it to serve."""
        with self.log.open("ab") as logf:
            self.proc = self.popen(logf)

    async def start(self, timeout: float = 20.0) -> None:
        """Run it until its admin port says ready. free_port() cannot reserve a port: if
        something on the box (docker-proxy, a published swarm port) bound one of ours in
        the meantime, the proxy exits saying so, and it is tried again on new ports."""
        for attempt in range(3):
            try:
                self.spawn()
                await self.ready(timeout)
                return
            except AssertionError as exc:
                if self._fixed_ports or attempt == 2 or not port_taken(exc):
                    raise
                self._pick_ports()

    async def ready(self, timeout: float = 20.0) -> None:
        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited {self.proc.returncode}:\n{self.logged()}")
            try:
                async with aiohttp.ClientSession() as s, s.get(self.admin + "/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(up, timeout, "proxy to be ready")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await eventually(lambda: proc.poll() is not None, timeout, "proxy to exit")
        return int(proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def stop_proxies(made: list[ProxyProcess], within: float) -> list[str]:
    """SIGTERM every proxy in `made` still running; what went wrong (a non-zero exit, no
    stop within `within` seconds: then SIGKILL), with each proxy's log."""
    problems = []
    for p in made:
        if p.proc is not None and p.proc.poll() is None:
            p.signal(signal.SIGTERM)
            try:
                if await p.wait(within) != 0:
                    problems.append(f"proxy exited {p.proc.returncode}:\n{p.log.read_text()}")
            except AssertionError:
                p.kill()
                problems.append(f"proxy did not stop within {within:g}s:\n{p.log.read_text()}")
    return problems


@asynccontextmanager
async def proxies_checked(
    proxy_process: Callable[[str], ProxyProcess],
    config_text: Callable[..., str],
    within: float,
    leftovers: Callable[[], list[str]],
) -> AsyncIterator[Callable[..., ProxyProcess]]:
    """The body of a backend's proxy fixture: make(**tables) -> a started-later ProxyProcess
    on config_text(**tables). At the end every proxy gets SIGTERM (stop_proxies) and
    `leftovers()` removes and names what the pool still holds: anything is a failure."""
    made: list[ProxyProcess] = []

    def make(**tables: dict[str, Any]) -> ProxyProcess:
        p = proxy_process(config_text(**tables))
        made.append(p)
        return p

    yield make
    problems = await stop_proxies(made, within)
    left = leftovers()
    if left:
        problems.append(f"the proxy left its instances behind: {left}")
    assert not problems, "\n".join(problems)


async def get(url: str, timeout: float = 30, method: str = "GET") -> tuple[int, str]:
    """One request on a new session: (status, body text); a POST sends b"x"."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.request(method, url, data=b"x" if method == "POST" else None) as r,
    ):
        return r.status, await r.text()


async def instances(p: ProxyProcess) -> list[dict[str, Any]]:
    """The proxy's admin /instances listing."""
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/instances") as r:
        return list((await r.json())["instances"])


@pytest.fixture
async def proxy_process(tmp_path: Path) -> AsyncIterator[Callable[[str], ProxyProcess]]:
    made: list[ProxyProcess] = []

    def make(config_text: str) -> ProxyProcess:
        p = ProxyProcess(config_text, tmp_path)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.proc is not None and p.proc.poll() is None:
            p.signal(signal.SIGTERM)
            try:
                await p.wait(15)
            except AssertionError:
                p.kill()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
