"""The warm ladder below the instances: a fork template given back after its app had no
instance for template_idle_ttl (and climbed back on the next start), and the shared
zygote the templates are forked from. Real templates, real Flask, /proc to see processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from forkproxy.backends.base import Backend
from forkproxy.backends.process import _zygote_client
from forkproxy.backends.process._procfs import is_running, proc_state
from forkproxy.backends.process.fork import ForkBackend
from forkproxy.backends.process.leftovers import scan
from forkproxy.backends.support.gaps import GapLog
from forkproxy.backends.support.owner import Owner, new_owner_id, this_space
from tests.backends.contract import get, recording_context
from tests.backends.process.helpers import MakeBackend, process_config
from tests.conftest import eventually

FLASK = "tests.backends.process.wsgi_apps:flask_app"


def fork(backend: Backend) -> ForkBackend:
    assert isinstance(backend, ForkBackend)
    return backend


def ladder(backend: Backend) -> dict[str, Any]:
    rungs = backend.ladder()
    assert rungs is not None
    return rungs


def ppid(pid: int) -> int:
    state = proc_state(pid)
    assert state is not None, f"pid {pid} is gone"
    return state[1]


async def gone(pid: int) -> None:
    await eventually(lambda: not is_running(pid), 10.0, f"pid {pid} to exit")


async def test_template_is_given_back_after_the_ttl_and_climbed_back(
    make_backend: MakeBackend,
) -> None:
    backend = fork(make_backend(app=FLASK, template_idle_ttl="300ms"))
    await backend.prepare()
    inst = await backend.start("ttl-1")
    assert (await get(inst.endpoint.url + "/rand", 10.0))[0] == 200
    template = int(inst.meta["template_pid"])
    handle = backend._template
    assert handle is not None and handle.reader is not None
    await asyncio.sleep(0.6)
    assert is_running(template), "given back while it still had an instance"
    await backend.stop(inst, "idle")
    await gone(template)  # the process itself, by /proc
    await eventually(handle.reader.done, 5.0, "its message reader to end")  # no task left
    assert ladder(backend)["template_up"] is False
    assert backend.template_give_backs == 1

    again = await backend.start("ttl-2")  # climbs back: a new template, then the fork
    assert (await get(again.endpoint.url + "/rand", 10.0))[0] == 200
    assert int(again.meta["template_pid"]) != template
    rungs = ladder(backend)
    assert rungs["template_up"] is True and rungs["template_starts"] == 2
    assert rungs["template_start_s"] > 0 and rungs["fork_s"] > 0


async def test_off_keeps_the_template(make_backend: MakeBackend) -> None:
    backend = fork(make_backend(app=FLASK, template_idle_ttl="off"))
    await backend.prepare()
    await backend.stop(await backend.start("off-1"), "idle")
    await asyncio.sleep(0.5)
    assert ladder(backend)["template_up"] is True
    assert backend.template_give_backs == 0


async def test_concurrent_starts_during_the_climb_share_one_template(
    make_backend: MakeBackend,
) -> None:
    backend = fork(make_backend(app=FLASK, template_idle_ttl="100ms"))
    await backend.prepare()
    await eventually(lambda: backend.template_give_backs == 1, 10.0, "the template given back")
    started = await asyncio.gather(*(backend.start(f"burst-{i}") for i in range(5)))
    assert len({i.meta["template_pid"] for i in started}) == 1
    assert backend.template_starts == 2  # the first, and one climb back for all five
    for inst in started:
        assert (await get(inst.endpoint.url + "/rand", 10.0))[0] == 200


async def test_two_apps_templates_are_children_of_one_zygote(
    make_backend: MakeBackend,
) -> None:
    flask_app = fork(make_backend(app=FLASK))
    other = recording_context(f"test-proc-{uuid.uuid4().hex[:8]}", start_timeout=20.0)
    aiohttp_app = fork(make_backend(other, app="examples.app:create_app"))
    await asyncio.gather(flask_app.prepare(), aiohttp_app.prepare())
    zygote = _zygote_client.running()
    assert zygote is not None
    a = await flask_app.start("zy-flask")
    b = await aiohttp_app.start("zy-aiohttp")
    templates = [int(i.meta["template_pid"]) for i in (a, b)]
    assert [ppid(t) for t in templates] == [zygote.pid, zygote.pid]
    assert ppid(zygote.pid) == os.getpid()  # the proxy owns the zygote
    assert (await get(a.endpoint.url + "/rand", 10.0))[0] == 200
    assert (await get(b.endpoint.url + "/", 10.0))[0] == 200
    # each template carries its own app's labels, found by the leftovers scan
    for backend, inst in ((flask_app, a), (aiohttp_app, b)):
        found = {f.pid: f for f in scan(backend.ctx.pool_name)}
        assert found[int(inst.meta["template_pid"])].kind == "template"
        assert found[inst.handle].kind == "fork" and found[inst.handle].instance_id == inst.id
    assert ladder(flask_app)["zygote"]["pid"] == zygote.pid


async def test_zygote_off_spawns_the_template_as_before(make_backend: MakeBackend) -> None:
    backend = fork(make_backend(app=FLASK, zygote=False))
    await backend.prepare()
    inst = await backend.start("no-zygote")
    assert ppid(int(inst.meta["template_pid"])) == os.getpid()
    assert _zygote_client.running() is None
    assert ladder(backend)["zygote"] is None


async def test_app_env_cwd_and_pythonpath_apply_in_the_forked_template(
    make_backend: MakeBackend, tmp_path: Any
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "zyapp.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [f\"{os.environ['ZY_MARK']} {os.getcwd()}\".encode()]\n"
    )
    backend = fork(
        make_backend(app="zyapp:app", cwd=str(tmp_path), pythonpath=["lib"], env={"ZY_MARK": "m"})
    )
    await backend.prepare()
    inst = await backend.start("zy-env")
    assert ladder(backend)["zygote"] is not None
    assert await get(inst.endpoint.url + "/", 10.0) == (200, f"m {tmp_path}".encode())


@pytest.mark.parametrize("zygote", [True, False])
async def test_the_app_sees_the_proxys_command_line_with_or_without_the_zygote(
    make_backend: MakeBackend, tmp_path: Any, zygote: bool
) -> None:
    """As a gunicorn app sees gunicorn's argv: not the template's or the zygote's JSON
    spec, and the same whichever started the template."""
    (tmp_path / "argvapp.py").write_text(
        "import json, sys\n"
        "ARGV = json.dumps(sys.argv).encode()  # at import, in the template\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [ARGV]\n"
    )
    backend = fork(make_backend(app="argvapp:app", cwd=str(tmp_path), zygote=zygote))
    await backend.prepare()
    inst = await backend.start(f"argv-{zygote}")
    assert (ladder(backend)["zygote"] is not None) == zygote
    status, body = await get(inst.endpoint.url + "/", 10.0)
    assert (status, json.loads(body)) == (200, sys.argv)


async def test_close_leaves_no_zygote_template_or_instance(make_backend: MakeBackend) -> None:
    first = fork(make_backend(app=FLASK))
    other = recording_context(f"test-proc-{uuid.uuid4().hex[:8]}", start_timeout=20.0)
    second = fork(make_backend(other, app=FLASK))
    await asyncio.gather(first.prepare(), second.prepare())
    zygote = _zygote_client.running()
    assert zygote is not None
    insts = [await first.start("close-1"), await second.start("close-2")]
    pids = [zygote.pid, *(i.handle for i in insts), *(int(i.meta["template_pid"]) for i in insts)]
    await first.aclose()
    assert is_running(zygote.pid)  # still the second app's
    await second.aclose()
    for pid in pids:
        await gone(pid)
    assert _zygote_client.running() is None


async def test_a_dead_zygote_is_replaced_on_the_next_climb(make_backend: MakeBackend) -> None:
    backend = fork(make_backend(app=FLASK, template_idle_ttl="100ms"))
    await backend.prepare()
    zygote = _zygote_client.running()
    assert zygote is not None
    await eventually(lambda: backend.template_give_backs == 1, 10.0, "the template given back")
    os.kill(zygote.pid, 9)
    await gone(zygote.pid)
    inst = await backend.start("after-zygote")
    assert (await get(inst.endpoint.url + "/rand", 10.0))[0] == 200
    now = _zygote_client.running()
    assert now is not None and now.pid != zygote.pid
    assert ppid(int(inst.meta["template_pid"])) == now.pid


def test_template_ttl_auto_is_priced_and_bounded() -> None:
    auto = process_config(app=FLASK)
    assert auto.template_ttl(0.01) == 5.0  # floor
    assert auto.template_ttl(5.0) == 100.0  # 20 starts' worth
    assert auto.template_ttl(100.0) == 300.0  # under 10 minutes, always
    assert process_config(template_idle_ttl=0).template_ttl(1.0) == 0.0
    # an app called every ~20 s: its learned gaps (2 x the 99th percentile) hold the
    # template through them, where the start price alone gave it back after 5 s
    gaps = GapLog()
    for k in range(20):
        gaps.idle(100.0 * k)
        gaps.arrival(100.0 * k + 10.0 + k % 3)
    assert auto.template_ttl(0.2, gaps) == 24.0
    # ... not when holding it costs more than LEARNED_STARTS template starts (0.02 s: 10 s)
    assert auto.template_ttl(0.02, gaps) == 5.0
    # a fixed key is the operator's choice, learned gaps or not
    assert process_config(template_idle_ttl=0).template_ttl(0.2, gaps) == 0.0


def test_template_keys_parse_and_bad_values_name_the_key() -> None:
    from tests.backends.process.test_process_config import parse

    config, problems = parse(template_idle_ttl="off", zygote=False, zygote_preload=["flask"])
    assert problems == []
    assert config.template_ttl(1.0) == float("inf")
    assert (config.zygote, config.zygote_preload, config.uses_zygote) == (False, ("flask",), False)
    assert parse(template_idle_ttl="2m")[0].template_idle_ttl == 120.0
    _, problems = parse(template_idle_ttl="soon")
    assert len(problems) == 1 and problems[0].startswith("backend.template_idle_ttl: 'soon'")
    assert problems[0].endswith('(or "auto", "off")')
    _, problems = parse(zygote="yes")
    assert problems == ["backend.zygote: expected true or false, got 'yes'"]
    # interpreter start-up settings act only at exec: such an app bypasses the zygote
    assert parse(env={"PYTHONHASHSEED": "0"})[0].uses_zygote is False


async def test_a_zygote_whose_proxy_is_gone_is_reaped() -> None:
    # A "proxy" that has stopped (its owner id proves it), and one that runs (us).
    gone_proxy = subprocess.Popen(["sleep", "0"])
    gone_proxy.wait()
    dead = str(Owner("ghost", this_space(), gone_proxy.pid, 1))
    alive = new_owner_id()
    zygotes = []
    for owner in (dead, alive):
        env = _zygote_client.zygote_env(owner)  # labelled as a real zygote is
        zygotes.append(subprocess.Popen(["sleep", "60"], env=env))
    try:
        killed = await asyncio.to_thread(_zygote_client.reap_leftovers)
        assert zygotes[0].pid in killed and zygotes[1].pid not in killed
        assert zygotes[0].wait(10) == -9
        assert zygotes[1].poll() is None
    finally:
        for proc in zygotes:
            proc.kill()
            proc.wait()


async def test_a_new_generation_gets_a_new_zygote_when_an_import_changed(
    make_backend: MakeBackend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upgrade (or an edited checkout) then a reload: the new generation's templates
    must not fork from a zygote holding the old code; the old one lives while used."""
    (tmp_path / "zyfw.py").write_text("VERSION = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the zygote inherits the environment
    old = fork(make_backend(app=FLASK, zygote_preload=["zyfw"]))
    await old.prepare()
    first = _zygote_client.running()
    assert first is not None and "zyfw" in first.ready.preloaded
    (tmp_path / "zyfw.py").write_text("VERSION = 2\n")
    stat = os.stat(tmp_path / "zyfw.py")
    os.utime(tmp_path / "zyfw.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    new = fork(make_backend(app=FLASK, zygote_preload=["zyfw"]))
    await new.prepare()
    second = _zygote_client.running()
    assert second is not None and second.pid != first.pid
    assert ladder(new)["zygote"]["pid"] == second.pid
    assert ladder(old)["zygote"]["pid"] == first.pid  # still its templates' parent
    await old.aclose()
    await gone(first.pid)  # its last user went
    assert is_running(second.pid)
    unchanged = fork(make_backend(app=FLASK, zygote_preload=["zyfw"]))
    await unchanged.prepare()  # nothing changed since the second: shared
    assert ladder(unchanged)["zygote"]["pid"] == second.pid
