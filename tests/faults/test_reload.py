"""SIGHUP reloads: the config file is read again; new code (fork mode: a new template)
serves new requests while the old instances drain, pool settings apply in place, a bad
config or app leaves the proxy serving what it ran; clients looping through it see no
error."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forkproxy.proxy.config import Config, parse
from forkproxy.proxy.reload import plan
from tests.conftest import eventually, pid_alive, proxy_config
from tests.faults.reload_helpers import Load, Proc, stop_all

APP = """
import asyncio
import os

from aiohttp import web

TEXT = {text!r}


async def index(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "0")))
    return web.Response(text=TEXT, headers={{"X-Pid": str(os.getpid())}})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    return app
"""

FORK = """
[server]
name = "{name}"
shutdown_timeout = "20s"
[pool]
idle_ttl = "60s"
max_concurrency = {max_c}
start_timeout = "10s"
[backend]
type = "process"
mode = "fork"
app = "{module}:create_app"
pythonpath = ["{path}"]
"""

ONE_INSTANCE = """
[server]
name = "{name}"
shutdown_timeout = "20s"
[pool]
idle_ttl = "60s"
min_instances = 1
max_instances = 1
max_queue = 0
max_concurrency = {max_c}
start_timeout = "20s"
[backend]
type = "process"
mode = "{mode}"
{app}
"""


@pytest.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Callable[[str], Proc]]:
    made: list[Proc] = []

    def make(config_text: str) -> Proc:
        p = Proc(config_text, tmp_path)
        made.append(p)
        return p

    yield make
    await stop_all(made)


def write_app(tmp: Path, module: str, text: str) -> None:
    path = tmp / f"{module}.py"
    path.write_text(APP.format(text=text))


def fork_config(tmp: Path, module: str, max_c: int = 10) -> str:
    return FORK.format(name=f"reload-{module}", max_c=max_c, module=module, path=tmp)


async def test_sighup_under_load_serves_new_code_with_no_error(
    procs: Callable[[str], Proc], tmp_path: Path
) -> None:
    write_app(tmp_path, "app_v", "v1")
    p = procs(fork_config(tmp_path, "app_v"))
    await p.start()
    async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
        assert await r.text() == "v1"
        old_pid = int(r.headers["X-Pid"])
    old_owner = (await _instances(p))["owner"]
    async with Load(p.port, "/?s=0.02", fresh=2, kept=2) as load:
        await load.until(40)
        write_app(tmp_path, "app_v", "v2")  # the code changes, the config does not
        await p.reload()
        await eventually(lambda: load.bodies[-8:] == ["v2"] * 8, 20, "v2 answers")
        await load.until(40)
    print(load.summary())
    assert load.fresh.errors == 0 and load.kept.errors == 0, load.summary()
    assert "v1" in load.bodies and "v2" in load.bodies
    assert "starting a new generation (fork mode" in p.logged()
    # the old generation drained and closed: its instance is gone, the new one serves
    await p.wait_log("generation 1 closed", 30)
    await eventually(lambda: not pid_alive(old_pid), 10, "the old instance to stop")
    async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
        assert await r.text() == "v2"
    # the admin listener follows the new generation: its owner, its instances
    listed = await _instances(p)
    assert listed["owner"] != old_owner
    assert listed["instances"] and {i["owner"] for i in listed["instances"]} == {listed["owner"]}


async def _instances(p: Proc) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(p.admin + "/instances") as r:
        assert r.status == 200
        listed: dict[str, Any] = await r.json()
        return listed


async def test_sighup_lets_in_flight_requests_finish_on_the_old_code(
    procs: Callable[[str], Proc], tmp_path: Path
) -> None:
    write_app(tmp_path, "app_slow", "old")
    p = procs(fork_config(tmp_path, "app_slow"))
    await p.start()
    async with aiohttp.ClientSession() as s:

        async def slow() -> tuple[int, str]:
            async with s.get(p.url + "/?s=1.5") as r:
                return r.status, await r.text()

        pending = asyncio.gather(slow(), slow(), slow())
        await asyncio.sleep(0.3)
        write_app(tmp_path, "app_slow", "new")
        await p.reload()
        async with s.get(p.url + "/") as r:
            assert await r.text() == "new"  # served while the old requests still run
        assert await pending == [(200, "old")] * 3


@pytest.mark.parametrize("mode", ["exec", "fork"])
async def test_pool_setting_takes_effect(procs: Callable[[str], Proc], mode: str) -> None:
    """One instance, no queue: with max_concurrency 1, two of three parallel requests
    are refused; after a reload to 3, all three pass. exec mode: in place, on the same
    instance; fork mode: through a new generation."""
    # exec mode runs the demo by default; a fork-mode file names its app
    app = 'app = "forkproxy.backends.process.demo:create_app"' if mode == "fork" else ""
    p = procs(ONE_INSTANCE.format(name=f"reload-pool-{mode}", max_c=1, mode=mode, app=app))
    await p.start(60)

    async def three() -> tuple[list[int], set[str]]:
        async with aiohttp.ClientSession() as s:

            async def one() -> tuple[int, str]:
                async with s.get(p.url + "/io?ms=800") as r:
                    await r.read()
                    return r.status, r.headers.get("X-Pid", "")

            got = await asyncio.gather(one(), one(), one())
        return sorted(st for st, _ in got), {pid for st, pid in got if st == 200}

    await eventually(lambda: "instance" in p.logged() and "ready at" in p.logged(), 30)
    statuses, pids_before = await three()
    assert statuses == [200, 503, 503]
    p.config.write_text(
        ONE_INSTANCE.format(name=f"reload-pool-{mode}", max_c=3, mode=mode, app=app)
    )
    await p.reload()
    statuses, pids_after = await three()
    assert statuses == [200, 200, 200]
    if mode == "exec":
        assert "pool settings applied in place" in p.logged()
        assert pids_after == pids_before  # the same instance: no new generation
    else:
        assert "generation 2 serves" in p.logged()


async def test_bad_config_or_app_on_sighup_keeps_serving(
    procs: Callable[[str], Proc], tmp_path: Path
) -> None:
    write_app(tmp_path, "app_bad", "good")
    good = fork_config(tmp_path, "app_bad")
    p = procs(good)
    await p.start()
    async with Load(p.port, "/", fresh=1, kept=1) as load:
        await load.until(10)
        # a bad value: logged with its key path, nothing changes
        p.config.write_text(good.replace("max_concurrency = 10", 'max_concurrency = "lots"'))
        await p.reload()
        assert "still running the previous one" in p.logged()
        assert "pool.max_concurrency" in p.logged()
        # not TOML at all
        p.config.write_text("[pool\n")
        await p.reload()
        assert p.logged().count("still running the previous one") == 2
        # a valid config whose app does not import: the new generation never serves
        p.config.write_text(good)
        (tmp_path / "app_bad.py").write_text("raise RuntimeError('broken on purpose')\n")
        await p.reload()
        assert "reload failed, still serving generation 1" in p.logged()
        # a listen address cannot move without a restart: said, and ignored
        write_app(tmp_path, "app_bad", "good")
        p.config.write_text(good.replace("[server]", '[server]\nadmin_token_file = "/x"'))
        await p.reload()
        assert "server.admin_token_file changed; that needs a restart" in p.logged()
        await load.until(10)
    assert load.fresh.errors == 0 and load.kept.errors == 0, load.summary()
    assert set(load.bodies) == {"good"}
    p.signal(signal.SIGTERM)
    assert await p.wait(30) == 0


def test_plan_sorts_changes() -> None:
    """Which reload each change asks for (the pure part)."""

    def cfg(**tables: dict[str, Any]) -> Config:
        base = proxy_config(**tables)
        base["server"]["name"] = "plan"
        return parse(base)

    exec_backend = {"type": "process", "mode": "exec"}
    old = cfg(backend=exec_backend)
    same = plan(old, old)
    assert (same.rebuild, same.pool_changed, same.needs_restart) == ("", False, ())
    pool = plan(old, cfg(backend=exec_backend, pool={"max_concurrency": 3}))
    assert (pool.rebuild, pool.pool_changed) == ("", True)
    assert pool.cfg.pool.max_concurrency == 3
    moved = plan(old, cfg(backend=exec_backend, server={"listen": "127.0.0.1:1"}))
    assert moved.needs_restart == ("server.listen",)
    assert moved.cfg.server.listen == old.server.listen
    backend = plan(old, cfg(backend={**exec_backend, "stop_grace": "1s"}))
    assert backend.rebuild == "the backend section changed"
    fork = cfg()
    assert plan(fork, fork).rebuild.startswith("fork mode")
    probe = plan(old, cfg(backend=exec_backend, pool={"readiness_path": "/h"}))
    assert probe.rebuild == "pool.readiness_path changed"
    limits = plan(old, cfg(backend=exec_backend, server={"max_body_size": "1k"}))
    assert limits.rebuild == ""


SLOW_IMPORT = """
import os
import pathlib
import time

from aiohttp import web

HERE = pathlib.Path(__file__).parent
(HERE / f"imported-{os.getpid()}").write_text("")
if (HERE / "slow").exists():
    time.sleep(5)


async def index(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    return app
"""


def imported(tmp: Path) -> list[int]:
    """The pids of the templates that imported SLOW_IMPORT."""
    return [int(f.name.split("-")[1]) for f in tmp.glob("imported-*")]


async def test_sigterm_during_a_reload_leaves_no_template(
    procs: Callable[[str], Proc], tmp_path: Path
) -> None:
    (tmp_path / "app_import.py").write_text(SLOW_IMPORT)
    p = procs(fork_config(tmp_path, "app_import"))
    await p.start()
    (tmp_path / "slow").write_text("")
    p.signal(signal.SIGHUP)
    await eventually(lambda: len(imported(tmp_path)) == 2, 20, "a new template")
    p.signal(signal.SIGTERM)  # while the new template still imports the app
    assert await p.wait(30) == 0
    pids = imported(tmp_path)
    await eventually(lambda: not any(pid_alive(x) for x in pids), 10, "the templates to stop")


async def test_a_burst_of_sighups_under_load(procs: Callable[[str], Proc], tmp_path: Path) -> None:
    """Reloads run one at a time and a burst collapses into one more: no error, and the
    last generation serves the last code."""
    write_app(tmp_path, "app_burst", "v1")
    p = procs(fork_config(tmp_path, "app_burst"))
    await p.start()
    async with Load(p.port, "/", fresh=2, kept=2) as load:
        await load.until(20)
        write_app(tmp_path, "app_burst", "v2")
        # an app slow to import: the reloads overlap even though the zygote makes a
        # template's own start a fork (a tiny app's reload is over in milliseconds)
        with (tmp_path / "app_burst.py").open("a") as f:
            f.write("\nimport time\ntime.sleep(1.0)\n")
        for _ in range(5):
            p.signal(signal.SIGHUP)
            await asyncio.sleep(0.05)
        await p.wait_log("a reload is queued already", 20)
        await eventually(lambda: "v2" in load.bodies[-4:], 30, "v2 answers")
        await eventually(lambda: p.logged().count("reload done") == 2, 30, "two reloads")
        await load.until(20)
    assert load.fresh.errors == 0 and load.kept.errors == 0, load.summary()
    assert p.logged().count("SIGHUP: reloading") == 2


async def test_changed_backend_section_replaces_exec_instances(
    procs: Callable[[str], Proc],
) -> None:
    """exec mode keeps its instances over a pool change, but a changed [backend] starts
    a new generation: new instances, the old ones stopped once drained."""
    text = ONE_INSTANCE.format(name="reload-exec-backend", max_c=4, mode="exec", app="")
    p = procs(text)
    await p.start(60)
    await p.wait_log("ready at", 30)  # max_queue = 0: nothing waits for the first start
    async with aiohttp.ClientSession() as s:
        async with s.get(p.url + "/io?ms=0") as r:
            old_pid = int(r.headers["X-Pid"])
        p.config.write_text(text + 'env = { RELOADED = "1" }\n')
        await p.reload()
        assert "starting a new generation (the backend section changed)" in p.logged()
        async with s.get(p.url + "/io?ms=0") as r:
            assert r.status == 200 and int(r.headers["X-Pid"]) != old_pid
    await eventually(lambda: not pid_alive(old_pid), 20, "the old instance to stop")
