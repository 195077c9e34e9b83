"""Start, probe and stop the subprocesses a benchmark needs (app, forkproxy, nginx, locust).

Every child runs in its own process group so stopping it also stops what it forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from forkproxy.backends.support.probe import NotReady, wait_ready

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def forkproxy_cmd() -> list[str]:
    """The forkproxy CLI: the venv's console script if installed, else `python -m forkproxy`."""
    script = Path(PYTHON).parent / "forkproxy"
    return [str(script)] if script.exists() else [PYTHON, "-m", "forkproxy"]


@dataclass(frozen=True)
class Ran:
    returncode: int
    out: str  # stdout and stderr, interleaved as written


async def run_captured(
    argv: Sequence[str],
    timeout: float,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> Ran | None:
    """Run a command to completion with its output captured; None if it outlived `timeout`
    (it is then killed and reaped, never left behind)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=None if cwd is None else str(cwd),
        env=None if env is None else dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(errors="replace"))


class Proc:
    """A running child; `log` holds its combined stdout/stderr for error messages."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    async def stop(self, grace: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        # Reap stragglers the leader left behind in its group (e.g. forked instances).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _log_file(log_dir: Path, name: str) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{name}.log"


async def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
) -> Proc:
    log = _log_file(log_dir, name)
    full_env = {**os.environ, **(env or {})}
    # The repo root on PYTHONPATH lets `examples.app` and `proxy` import from a checkout.
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), full_env.get("PYTHONPATH", "")) if p
    )
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=fh,
            stderr=asyncio.subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd),
            start_new_session=True,
        )
    return Proc(name, proc, log)


@contextlib.asynccontextmanager
async def running(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    ready_url: str | None = None,
    ready_within: float = 30.0,
) -> AsyncIterator[Proc]:
    proc = await spawn(name, argv, log_dir, env)
    try:
        if ready_url:
            await wait_http(ready_url, ready_within, proc)
        yield proc
    finally:
        await proc.stop()


@contextlib.asynccontextmanager
async def running_on_free_port(
    name: str,
    make_argv: Callable[[int], Sequence[str]],
    log_dir: Path,
    ready_path: str = "/healthz",
    attempts: int = 3,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[Proc, int]]:
    """Like running(), on a fresh free port; another process on the box may take the port
    between free_port() and the child's bind, so that failure is retried on a new port."""
    for attempt in range(attempts):
        port = free_port()
        proc = await spawn(name, make_argv(port), log_dir, env)
        try:
            await wait_http(f"http://127.0.0.1:{port}{ready_path}", 30, proc)
        except RuntimeError as e:
            await proc.stop()
            if port_taken(e) and attempt < attempts - 1:
                continue
            raise
        except BaseException:
            await proc.stop()
            raise
        break
    try:
        yield proc, port
    finally:
        await proc.stop()


def port_taken(e: BaseException) -> bool:
    return "address already in use" in str(e).lower()


async def wait_http(url: str, within: float, proc: Proc | None = None) -> None:
    """Poll `url` until it answers 2xx (the shared probe, stricter than the pool's < 500: a
    bench target must serve its page); fail early with the log tail if the child died."""

    async def child_alive() -> None:
        if proc is not None and proc.proc.returncode is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.proc.returncode} before {url} answered:\n"
                f"{proc.tail()}"
            )

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        try:
            await wait_ready(
                session,
                url,
                ready_below=300,
                deadline=time.monotonic() + within,
                check=child_alive,
                first_delay=0.05,
                max_delay=0.05,
            )
        except NotReady as e:
            tail = f"\n{proc.tail()}" if proc else ""
            raise TimeoutError(f"{url} not ready after {within:.0f}s ({e.last}){tail}") from None
