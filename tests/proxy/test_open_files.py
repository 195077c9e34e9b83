"""Issue 21, item 5: the open-file limit. A real forkproxy process started under a low
RLIMIT_NOFILE raises its soft limit to the hard one, and keeps max_connections below
what the limit leaves: more idle connections than it can hold get a clean 503, while a
request on a held connection still gets a cold start, and nothing fails with EMFILE."""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest

from forkproxy.proxy import open_files
from forkproxy.proxy.config import parse
from tests.conftest import ProxyProcess, get

NOFILE_LOW = 256


def _nofile(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def _config() -> str:
    # a small pool: 64 + 2 * (4 + 2) + 1 * 4 + 8 = 88 kept, so 256 - 88 = 168 clients
    return f"""
[server]
admin_max_connections = 8
header_timeout = "60s"
keepalive_timeout = "60s"

[pool]
max_concurrency = 2
max_instances = 2
max_starting = 1
min_instances = 0
idle_ttl = "60s"
start_timeout = "20s"
readiness_path = "/healthz"

[backend]
type = "process"
mode = "exec"
command = ["{sys.executable}", "-m", "examples.app", "--port", "{{port}}"]
"""


def _soft_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def test_reserve_and_fit_at_the_defaults(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse({})
    assert open_files.reserve(cfg) == 64 + 20 * (4 + 10) + 4 * 4 + 64
    with caplog.at_level(logging.WARNING, "forkproxy"):
        fitted = open_files.fit(cfg, 1024)
    assert fitted.server.limits.max_connections == 1024 - 424 == 600
    (line,) = [r.getMessage() for r in caplog.records]
    assert "max_connections 10000 > what RLIMIT_NOFILE 1024 allows: using 600" in line
    assert open_files.fit(cfg, 1 << 20) is cfg  # room enough: untouched, nothing logged
    assert open_files.fit(cfg, resource.RLIM_INFINITY) is cfg
    assert open_files.fit(cfg, 100).server.limits.max_connections == 1
    admin_off = parse({"server": {"admin": "off"}})
    assert open_files.reserve(admin_off) == open_files.reserve(cfg) - 64


async def test_soft_limit_is_raised_to_the_hard_one(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(_config())
    p.preexec_fn = _nofile(NOFILE_LOW, 1024)
    await p.start()
    assert p.proc is not None
    assert _soft_limit(p.proc.pid) == (1024, 1024)
    assert "RLIMIT_NOFILE 1024 allows: using 936" in p.log.read_text()


async def _answer(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """What the proxy sent before closing, or None if it kept the connection open."""
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(4096):
                got += chunk
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return got


async def test_more_connections_than_files_get_503_and_a_cold_start_still_works(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(_config())
    p.preexec_fn = _nofile(NOFILE_LOW, NOFILE_LOW)
    await p.start()
    clients = 300  # more than the 256 files the proxy may open
    async with AsyncExitStack() as stack:
        conns = []
        for _ in range(clients):
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            stack.callback(writer.close)
            conns.append((reader, writer))
        answers = await asyncio.gather(*(_answer(r, 6.0) for r, _ in conns))
        held = [c for c, a in zip(conns, answers, strict=True) if a is None]
        refused = [a for a in answers if a is not None]
        assert len(held) == 168, (len(held), refused[:3])
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in refused), refused[:3]
        # a request on a held connection: the pool has no instance yet, a cold start
        reader, writer = held[0]
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        resp = await _answer(reader, 30.0)
        assert resp is not None and resp.startswith(b"HTTP/1.1 200 "), resp
        assert b"cold;dur=" in resp, resp
        # its place is free again: a new client is served, on the instance just started
        assert (await get(p.url))[0] == 200
    assert (await get(p.url))[0] == 200  # and all of them once the idle ones leave
    assert p.proc is not None and p.proc.poll() is None
    log = p.log.read_text()
    assert "Too many open files" not in log and "EMFILE" not in log, log[-2000:]
    assert "max_connections 10000 > what RLIMIT_NOFILE 256 allows: using 168" in log
