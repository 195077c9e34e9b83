"""The real servers the replay suite puts behind forkproxy, each started once as a real
process on a free loopback port. A missing one is a skip with the reason, or a failure
when FORKPROXY_REQUIRE_BENCH_TOOLS=1 (CI): the suite never passes by leaving one out."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, eventually, free_port

HERE = Path(__file__).resolve().parent
PY = sys.executable
WSGI = "tests.proxy.replay.wsgi_app:app"
ASGI = "tests.proxy.replay.asgi_app:app"
AIOHTTP = "tests.proxy.replay.aiohttp_app:create_app"


@dataclass(frozen=True)
class Server:
    name: str
    argv: Callable[[int], list[str]]
    module: str = ""  # the Python package it needs
    binary: str = ""  # or the program

    def missing(self) -> str | None:
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (pip install -e '.[dev]')"
        if self.binary and shutil.which(self.binary) is None:
            return f"{self.binary} is not on PATH (apt-get install nodejs)"
        return None

    def require(self) -> None:
        why = self.missing()
        if why is None:
            return
        if os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") == "1":
            pytest.fail(f"replay server {self.name}: {why}, and FORKPROXY_REQUIRE_BENCH_TOOLS=1")
        pytest.skip(f"replay server {self.name}: {why}")


def _gunicorn(*worker: str) -> Callable[[int], list[str]]:
    return lambda p: [PY, "-m", "gunicorn", "-b", f"127.0.0.1:{p}", "-w", "1", *worker, WSGI]


def _uvicorn(http: str) -> Callable[[int], list[str]]:
    return lambda p: [
        *(PY, "-m", "uvicorn", "--http", http, "--host", "127.0.0.1", "--port", str(p)),
        *("--no-access-log", "--log-level", "warning", ASGI),
    ]


def _fork(kind: str, app: str) -> Callable[[int], list[str]]:
    return lambda p: [PY, "-m", "tests.proxy.replay.forkstack", str(p), kind, app]


SERVERS = [
    Server("gunicorn-sync", _gunicorn("-k", "sync"), module="gunicorn"),
    Server(
        "gunicorn-gthread",
        _gunicorn("-k", "gthread", "--threads", "4", "--keep-alive", "30"),
        module="gunicorn",
    ),
    Server(
        "waitress",
        lambda p: [PY, "-m", "waitress", f"--listen=127.0.0.1:{p}", "--threads=4", WSGI],
        module="waitress",
    ),
    Server("uvicorn-httptools", _uvicorn("httptools"), module="uvicorn"),
    Server("uvicorn-h11", _uvicorn("h11"), module="uvicorn"),
    Server(
        "aiohttp",
        lambda p: [PY, "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", str(p), AIOHTTP],
        module="aiohttp",
    ),
    Server(
        "hypercorn",
        lambda p: [PY, "-m", "hypercorn", "--bind", f"127.0.0.1:{p}", ASGI],
        module="hypercorn",
    ),
    Server("node", lambda p: ["node", str(HERE / "node_app.js"), str(p)], binary="node"),
    # fork mode's own serving stack (forkstack.py): what `forkproxy run` gives by default
    Server("fork-wsgi-waitress", _fork("wsgi", WSGI), module="waitress"),
    Server("fork-asgi-uvicorn", _fork("asgi", ASGI), module="uvicorn"),
    Server("fork-aiohttp", _fork("aiohttp", AIOHTTP), module="aiohttp"),
]
# answers scripted byte for byte (1xx with a body, bad status codes): not a real server,
# the one way to ask for what none of them sends
RAW = Server(
    "raw-scripted",
    lambda p: [PY, str(ROOT / "tests/proxy/hardening/scripted_instance.py"), str(p)],
    module="h11",
)


async def _answers(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(2):
            return (await reader.read(12)).startswith(b"HTTP/1.")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


async def _try(
    server: Server, log: Path, extra: tuple[str, ...]
) -> tuple[subprocess.Popen[bytes], int, bool]:
    """(process, port, whether it exited before answering)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as logf:
        proc = subprocess.Popen(
            [*server.argv(port), *extra], cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT
        )

    async def up() -> bool:
        return proc.poll() is not None or await _answers(port)

    try:
        await eventually(up, 30, f"{server.name} to answer on {port}")
    except AssertionError:
        proc.kill()
        proc.wait()
        raise
    return proc, port, proc.poll() is not None


async def _start(
    server: Server, log: Path, extra: tuple[str, ...]
) -> tuple[subprocess.Popen[bytes], int]:
    """The server's process and port, answering. free_port() cannot reserve the port: a
    server that exits before answering (the port taken meanwhile) is started again."""
    for _ in range(3):
        proc, port, exited = await _try(server, log, extra)
        if not exited:
            return proc, port
    raise AssertionError(f"{server.name} exited {proc.returncode}: {_log(log)}")


@contextlib.asynccontextmanager
async def running(server: Server, workdir: Path, *extra: str) -> AsyncIterator[int]:
    """`server` listening on a free port (yielded) until the block ends."""
    server.require()
    proc, port = await _start(server, workdir / f"{server.name}.log", extra)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
