"""Logs an operator can use: structured access records with request ids, one record per
failed start that says why, instance output attributed to its instance."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
import threading
from pathlib import Path

import pytest

from forkproxy.backends.base import Backend, Instance
from forkproxy.backends.errors import StartError
from forkproxy.backends.process.log import Attributed, emit
from forkproxy.backends.support.starts import Starts
from forkproxy.backends.support.tasks import TaskSet
from forkproxy.proxy.config import parse
from forkproxy.proxy.logs import JsonFormatter, valid_request_id
from forkproxy.proxy.server import Proxy
from tests.conftest import eventually, proxy_config, run_proxy

ACCESS_FIELDS = {
    "method",
    "path",
    "status",
    "bytes",
    "duration_ms",
    "queue_ms",
    "cold",
    "instance",
    "request_id",
}


def _access(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "forkproxy.access"]


async def test_access_log_is_one_structured_object_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.access")
    async with run_proxy(server={"access_log": True}) as p:
        async with p.session.get(p.url + "/bytes?n=5000") as r:
            assert r.status == 200
            body = await r.read()
            rid = r.headers["X-Request-ID"]
        async with p.session.get(p.url + "/io?ms=1") as r:
            assert r.status == 200
            await r.read()
        ids = {i["id"] for i in await p.instances()}
    first, second = _access(caplog)
    assert first.keys() >= ACCESS_FIELDS
    assert first["method"] == "GET"
    assert first["path"] == "/bytes?n=5000"
    assert first["status"] == 200
    assert isinstance(first["bytes"], int) and first["bytes"] > len(body)  # head included
    assert first["instance"] in ids
    assert first["request_id"] == rid
    assert first["cold"] is True  # the first request waited on the first start
    assert isinstance(first["queue_ms"], float) and first["queue_ms"] > 0
    assert second["cold"] is False
    assert second["request_id"] != rid
    assert first["duration_ms"] >= first["queue_ms"]  # type: ignore[operator]


async def test_a_websocket_is_logged_once_when_its_tunnel_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.access")
    async with run_proxy(server={"access_log": True}) as p:
        async with p.session.ws_connect(p.url + "/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
            assert _access(caplog) == []  # still open: nothing logged yet
            (inst,) = await p.instances()
            await ws.close()
        await eventually(lambda: _access(caplog), 5, "the tunnel's access record")
    (rec,) = _access(caplog)
    assert rec["method"] == "GET" and rec["path"] == "/ws"
    assert rec["status"] == 101
    assert rec["instance"] == inst["id"]
    assert rec["request_id"]
    assert isinstance(rec["bytes"], int) and rec["bytes"] > 0


async def test_a_refused_request_is_logged_with_its_reason_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.access")
    pool = {"max_queue": 0, "max_instances": 1, "min_instances": 0}
    async with (
        run_proxy(server={"access_log": True}, pool=pool) as p,
        p.session.get(p.url + "/") as r,
    ):
        assert r.status == 503
        assert r.headers["X-Request-ID"]
    (rec,) = _access(caplog)
    assert rec["status"] == 503
    assert rec["instance"] is None
    assert rec["request_id"] == r.headers["X-Request-ID"]


async def test_request_id_passed_through_forwarded_and_returned() -> None:
    async with run_proxy(server={"access_log": True}) as p:
        async with p.session.get(p.url + "/headers", headers={"X-Request-ID": "abc-123"}) as r:
            seen = (await r.json())["headers"]
            assert r.headers.getall("X-Request-ID") == ["abc-123"]
        assert seen["X-Request-ID"] == "abc-123"
        bad = "x" * 201
        async with p.session.get(p.url + "/headers", headers={"X-Request-ID": bad}) as r:
            seen = (await r.json())["headers"]
            rid = r.headers["X-Request-ID"]
        assert rid != bad and valid_request_id(rid.encode())
        assert seen["X-Request-ID"] == rid  # the instance got the replacement, not the bad one
        async with p.session.get(p.url + "/headers") as r:
            seen = (await r.json())["headers"]
            assert seen["X-Request-ID"] == r.headers["X-Request-ID"]


async def test_request_ids_cost_nothing_without_the_access_log() -> None:
    async with run_proxy() as p, p.session.get(p.url + "/headers") as r:
        assert "X-Request-ID" not in (await r.json())["headers"]
        assert "X-Request-ID" not in r.headers


def test_request_id_validation() -> None:
    assert valid_request_id(b"0f3a-XYZ_:/=.")
    assert not valid_request_id(b"")
    assert not valid_request_id(b"a b")  # space: a log field splits on it
    assert not valid_request_id(b"a\x7f")
    assert not valid_request_id("é".encode())
    assert valid_request_id(b"a" * 200)
    assert not valid_request_id(b"a" * 201)


# -- a failed start: one record, with its reason ------------------------------------------


class _Refusing(Backend):
    """Starts fail the way a docker start does (through forkproxy.backends.support.starts)."""

    name = "refusing"

    def __init__(self) -> None:
        log = logging.getLogger("forkproxy.backend.refusing")
        self._tasks = TaskSet("refusing", log)
        self._starts = Starts("refusing", log, self.stop, self._tasks)

    async def start(self, instance_id: str) -> Instance:
        return await self._starts.run(instance_id, self._start())

    async def _start(self) -> Instance:
        await asyncio.sleep(0)
        raise StartError("image not found: nope:latest", reason="image_missing")

    async def stop(self, instance: Instance, reason: str) -> None:
        pass

    async def list(self) -> list[Instance]:
        return []

    async def aclose(self) -> None:
        await self._starts.join()
        await self._tasks.aclose()


async def test_a_failed_start_is_logged_once_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = parse(proxy_config(pool={"min_instances": 1, "start_retries": 1}))
    proxy = Proxy(cfg, backend=_Refusing())
    await proxy.start()
    try:
        await eventually(lambda: proxy.pool.recent_failures, 5, "a failed start")
    finally:
        await proxy.stop()
    about = [r for r in caplog.records if "image not found" in r.getMessage() or r.exc_info]
    first = proxy.pool.recent_failures[0]["instance"]
    mine = [r for r in about if first in r.getMessage() or r.exc_info]
    assert len(mine) == 1, [(r.levelname, r.getMessage()) for r in mine]
    assert mine[0].levelname == "WARNING"
    assert "image_missing" in mine[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_start_timeout_says_what_timed_out(
    caplog: pytest.LogCaptureFixture, tmp_path: object
) -> None:
    caplog.set_level(logging.WARNING, logger="forkproxy.pool")
    # an instance that runs but never answers its readiness path
    backend = {
        "type": "process",
        "mode": "exec",
        "command": [sys.executable, "-c", "import time; time.sleep(60)", "{port}"],
    }
    pool = {"min_instances": 1, "start_timeout": "1s", "readiness_path": "/ready-here"}
    async with run_proxy(backend=backend, pool=pool) as p:
        await eventually(lambda: p.proxy.pool.recent_failures, 10, "a start timeout")
    text = next(r.getMessage() for r in caplog.records if "failed to start" in r.getMessage())
    assert "(timeout)" in text
    assert "not ready within 1s" in text
    assert "/ready-here" in text
    assert "ConnectionRefused" in text or "Connect" in text  # the last probe's error


# -- instance output, attributed ----------------------------------------------------------

LOUD_APP = """
import logging, os, sys
from aiohttp import web

logging.basicConfig(stream=sys.stderr, format="app-log %(message)s")  # set up before the fork

async def hello(request):
    print("hello-from-fork", file=sys.stderr, flush=True)
    logging.getLogger("app").warning("via-logging")
    os.write(2, b"raw-fd-write\\n")  # below sys.stderr: the template's
    return web.Response(text="ok")

def create_app():
    app = web.Application()
    app.router.add_get("/", hello)
    return app
"""


def _output(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (getattr(r, "fields", {}).get("instance", ""), r.getMessage())
        for r in caplog.records
        if r.name == "forkproxy.instance"
    ]


async def test_fork_instance_output_is_attributed_to_its_instance(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.instance")
    (tmp_path / "loud_app.py").write_text(LOUD_APP)
    backend = {"app": "loud_app:create_app", "cwd": str(tmp_path), "pythonpath": ["."]}
    async with run_proxy(backend=backend) as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 200
        (inst,) = [i["id"] for i in await p.instances()]

        def seen() -> bool:
            return any("raw-fd-write" in m for _, m in _output(caplog))

        await eventually(seen, 10, "the instance's output")
    out = _output(caplog)
    assert (inst, f"[{inst}] hello-from-fork") in out
    assert (inst, f"[{inst}] app-log via-logging") in out
    assert ("template", "[template] raw-fd-write") in out


async def test_exec_instance_output_is_attributed_to_its_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.instance")
    script = (
        "import sys, time; print('hello-from-exec', file=sys.stderr, flush=True); time.sleep(60)"
    )
    backend = {
        "type": "process",
        "mode": "exec",
        "command": [sys.executable, "-c", script, "{port}"],
    }
    async with run_proxy(backend=backend, pool={"min_instances": 1}) as p:
        await eventually(lambda: _output(caplog), 10, "the instance's output")
        (inst,) = [i["id"] for i in await p.instances()]
    assert _output(caplog)[0] == (inst, f"[{inst}] hello-from-exec")
    record = next(r for r in caplog.records if r.name == "forkproxy.instance")
    assert json.loads(JsonFormatter().format(record))["instance"] == inst


def test_attributed_marks_whole_lines_and_the_reader_takes_the_mark_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="forkproxy.instance")
    sink = io.StringIO()
    out = Attributed(sink, "i-1")
    print("a", "b", file=out)  # two writes, one line
    out.write("partial")
    out.writelines(["-x\n", "y\n"])
    out.write("tail")
    out.flush()
    lines = sink.getvalue().splitlines()
    assert [x.removeprefix("[instance i-1] ") for x in lines] == ["a b", "partial-x", "y", "tail"]
    assert all(x.startswith("[instance i-1] ") for x in lines)
    assert emit("template", lines[0].encode()) == ("i-1", "a b")
    assert emit("template", b"[not a mark] x") == ("template", "[not a mark] x")


def test_attributed_lines_of_threads_do_not_interleave() -> None:
    sink = io.StringIO()
    out = Attributed(sink, "i-2")

    def noisy(n: int) -> None:
        for _ in range(200):
            out.write(f"thread {n} ")
            out.write("says hello\n")

    threads = [threading.Thread(target=noisy, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 800
    assert all(re.fullmatch(r"\[instance i-2\] thread \d says hello", x) for x in lines)
