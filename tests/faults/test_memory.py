"""pool.max_memory: an instance that holds more than the limit (a leak) is retired (no
new requests, its in-flight ones finish, then it stops) and replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from forkproxy.backends.support import memory
from forkproxy.backends.support.table import ConfigError
from forkproxy.proxy.config import parse
from forkproxy.proxy.lifecycle import over_memory
from tests.conftest import ProxyProcess, eventually, pid_alive
from tests.faults.helpers import config, metric

_LEAKED: list[bytes] = []
_CHUNK = 20 * 2**20


async def _leak(request: web.Request) -> web.Response:
    _LEAKED.append(b"x" * _CHUNK)  # written, so resident (bytes(n) would be untouched pages)
    await asyncio.sleep(float(request.query.get("s", "0")))
    return web.Response(text=str(os.getpid()))


async def _pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


def leaky_app() -> web.Application:
    """aiohttp: /leak keeps 20 MB more for good, then answers after ?s= seconds."""
    app = web.Application()
    app.router.add_get("/", _pid)
    app.router.add_get("/leak", _leak)
    return app


async def test_a_leaking_instance_is_retired_and_replaced(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(
        config(
            app="tests.faults.test_memory:leaky_app",
            pool='max_memory = "100MiB"\nmax_instances = 2',
            backend='stop_grace = "5s"',
        )
    )
    await p.start()
    answers: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as s:
        # Each call holds 20 MB more and lasts 2.5 s, well beyond the pool's 1 s between
        # measurements: the call that takes it over the limit is still in flight when
        # the instance is retired.
        for _ in range(12):
            async with s.get(f"{p.url}/leak?s=2.5") as r:
                answers.append((r.status, await r.text()))
            if answers[-1][1] != answers[0][1]:
                break
    assert {status for status, _ in answers} == {200}, answers
    first = int(answers[0][1])
    served = sum(1 for _, pid in answers if int(pid) == first)
    assert answers[-1][1] != answers[0][1], "a new instance (another pid) took over"
    # over 100 MiB only after 5 calls (fewer if the fork started above 20 MiB)
    assert 3 <= served <= 7, answers
    await eventually(lambda: not pid_alive(first), 15, "the retired instance to exit")
    stops = await metric(p, "forkproxy_instance_stops_total")
    assert stops.get('forkproxy_instance_stops_total{reason="max_memory"}') == 1.0, stops
    log = p.log.read_text()
    assert log.count("over pool.max_memory 100.0 MiB") == 1, log
    assert "(1 in flight)" in log, "retired while the call that took it over ran"


def test_over_memory_picks_those_above_the_limit_largest_first() -> None:
    sizes = {"a": 50, "b": 200, "c": 101, "d": 100}
    assert over_memory(sizes, 100) == [("b", 200), ("c", 101)]
    assert over_memory(sizes, 0) == []  # 0: no limit


def test_max_memory_is_a_size_and_bad_values_name_the_key() -> None:
    assert parse({}).pool.max_memory == 0
    assert parse({"pool": {"max_memory": "512MiB"}}).pool.max_memory == 512 * 2**20
    for bad in ("lots", -1, True):
        with pytest.raises(ConfigError, match="max_memory"):
            parse({"pool": {"max_memory": bad}})


def test_measure_reads_a_pid_or_its_whole_tree() -> None:
    # a command with 2 workers (each a Python process): its tree is more than its pid
    sleeper = f"[{sys.executable!r}, '-c', 'import time; time.sleep(30)']"
    code = (
        f"import subprocess, time\nfor _ in range(2): subprocess.Popen({sleeper})\ntime.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tree = memory.measure({"i": proc.pid}, tree=True)
            alone = memory.measure({"i": proc.pid}, tree=False)
            if tree and alone and tree["i"] > alone["i"] * 2:
                break
            time.sleep(0.1)
        assert tree["i"] > alone["i"] * 2 > 0, (tree, alone)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # its own group: the workers too
        proc.wait()
    assert memory.measure({"gone": proc.pid}, tree=True) == {}


def test_pss_of_a_live_pid_and_none_when_gone() -> None:
    me = memory.pss(os.getpid())
    assert me is not None and me > 1 << 20
    assert memory.pss(2**22 + 7) is None  # above pid_max's usual range: no such process
