"""Helpers for the hardening tests: raw-socket exchanges (no client library to normalise
what is sent), a response splitter on llhttp, and proxies in front of a recording app or
a raw-TCP instance that answers broken responses on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

from tests.conftest import ROOT, Running, run_proxy

HERE = Path(__file__).resolve().parent
RECORDER = {
    "type": "process",
    "mode": "fork",
    "app": "tests.proxy.hardening.recorder_app:create_app",
}


@dataclass
class Resp:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.out: list[Resp] = []
        self.cur = Resp(0)
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.cur = Resp(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.cur.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.cur.body += body

    def on_message_complete(self) -> None:
        self.out.append(self.cur)


def parse_responses(data: bytes) -> list[Resp]:
    """Every complete response in `data` (a 100 Continue counts as one)."""
    col = _Collector()
    rest = data
    while rest:
        try:
            col.parser.feed_data(rest)
            rest = b""
        except httptools.HttpParserUpgrade as exc:  # llhttp stops after a 101
            rest = rest[int(exc.args[0]) :]
            col.parser = httptools.HttpResponseParser(col)
    return col.out


@dataclass
class Exchange:
    data: bytes
    closed: bool  # the proxy closed the connection (EOF or reset) before the deadline
    elapsed: float

    @property
    def responses(self) -> list[Resp]:
        return parse_responses(self.data)

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


async def exchange(port: int, *parts: bytes, timeout: float = 5.0, pause: float = 0.0) -> Exchange:
    """Send `parts` (with `pause` seconds between them) while reading, until the proxy
    closes the connection or `timeout` passes."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()
    gone = asyncio.Event()  # the proxy closed: elapsed is then, not the sender's next pause

    async def read() -> None:
        try:
            while chunk := await reader.read(65536):
                got.extend(chunk)
        except ConnectionError:
            pass
        gone.set()

    async def send() -> None:
        for i, part in enumerate(parts):
            if i and pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), pause)
            if gone.is_set():
                return
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                return

    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as tg:
            tg.create_task(read())
            tg.create_task(send())
    except TimeoutError:
        pass
    finally:
        writer.close()
    return Exchange(bytes(got), gone.is_set(), time.monotonic() - t0)


def seen(resp: Resp) -> dict[str, Any]:
    """What the recording app received, with header names lower-cased (order kept)."""
    got: dict[str, Any] = resp.json()
    got["names"] = [n.lower() for n, _ in got["headers"]]
    got["h"] = {}
    for n, v in got["headers"]:
        got["h"].setdefault(n.lower(), []).append(v)
    return got


async def metric(p: Running, name: str, **labels: str) -> float:
    """The sum of a prometheus sample over series carrying all of `labels`."""
    async with p.session.get(p.admin + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        series, _, rest = key.partition("{")
        if series == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def recorder(**tables: dict[str, Any]) -> Any:
    """A proxy in front of the recording app (fork backend), one warm instance."""
    pool = {"min_instances": 1, **tables.pop("pool", {})}
    return run_proxy(backend=RECORDER, pool=pool, **tables)


def raw_instance(log: Path, **tables: dict[str, Any]) -> Any:
    """A proxy in front of raw_instance.py (exec backend), readiness on /ready."""
    cmd = [sys.executable, str(HERE / "raw_instance.py"), "{port}", str(log)]
    pool = {"readiness_path": "/ready", **tables.pop("pool", {})}
    return run_proxy(backend={"mode": "exec", "command": cmd}, pool=pool, **tables)


async def warm(p: Running, path: str = "/") -> None:
    async with p.session.get(p.url + path) as r:
        assert r.status == 200, r.status


def gunicorn(app: str, *options: str, **tables: dict[str, Any]) -> Any:
    """A proxy in front of a real gunicorn (exec backend, one warm instance, one worker)
    serving `app` with `options`."""
    cmd = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:{port}", "--workers", "1"]
    cmd += [*options, "--chdir", str(ROOT), app]
    pool = {"min_instances": 1, "max_instances": 1, "start_timeout": "20s"}
    return run_proxy(backend={"mode": "exec", "command": cmd}, pool=pool, **tables)
