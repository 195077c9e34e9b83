"""Exec mode beyond the contract: environment and port handed to the command, early
exits reported with the stderr tail, missing commands, process groups, SIGKILL fallback."""

from __future__ import annotations

import asyncio
import time

import pytest

from forkproxy.backends.base import BackendContext
from forkproxy.backends.errors import BackendConfigError, StartError
from forkproxy.backends.process._procfs import is_running
from tests.backends.contract import deaths, recording_context, serves
from tests.backends.process.helpers import PY, MakeBackend, exec_command


async def wait_serving(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await serves(url, timeout=1.0):
        assert time.monotonic() < deadline, f"{url} never answered"
        await asyncio.sleep(0.05)


async def test_command_gets_port_and_labels(make_backend: MakeBackend) -> None:
    backend = make_backend(mode="exec", command=exec_command())
    await backend.prepare()
    inst = await backend.start("exec-env")
    assert inst.ready is False  # the pool probes it
    await wait_serving(inst.endpoint.url + "/")
    listed = {i.id: i for i in await backend.list()}
    assert listed["exec-env"].meta["kind"] == "exec"
    assert listed["exec-env"].endpoint.port == inst.endpoint.port  # from $PORT


async def test_early_exit_reports_the_stderr_tail(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    script = "import sys; print('boom: no database', file=sys.stderr); sys.exit(3)"
    backend = make_backend(mode="exec", command=[PY, "-c", script, "{port}"])
    await backend.prepare()
    inst = await backend.start("exec-dies")
    reason = await deaths(ctx).wait_for(inst.id, 20.0)
    assert reason == "exited:3: boom: no database"


async def test_missing_command_is_a_clear_error(make_backend: MakeBackend) -> None:
    backend = make_backend(mode="exec", command=["/nonexistent/server", "--port", "{port}"])
    with pytest.raises(BackendConfigError, match="'/nonexistent/server' is not an executable"):
        await backend.prepare()
    with pytest.raises(StartError, match="/nonexistent/server"):
        await backend.start("exec-missing")


async def test_command_not_on_path(make_backend: MakeBackend) -> None:
    backend = make_backend(mode="exec", command="no-such-server-xyz --port {port}")
    with pytest.raises(BackendConfigError, match="'no-such-server-xyz' not found on PATH"):
        await backend.prepare()


async def test_stop_takes_down_the_whole_process_group(make_backend: MakeBackend) -> None:
    # A shell wrapper that leaves a background child: stop() must not leave it behind.
    command = ["sh", "-c", f"sleep 300 & exec {PY} -m examples.app --port $PORT"]
    backend = make_backend(mode="exec", command=command)
    await backend.prepare()
    inst = await backend.start("exec-group")
    await wait_serving(inst.endpoint.url + "/")
    group = [p for p in _pids_in_group(inst.handle)]
    assert len(group) >= 2, group
    await backend.stop(inst, "test")
    assert [p for p in group if is_running(p)] == []


async def test_sigterm_ignored_falls_back_to_sigkill(make_backend: MakeBackend) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(300)"
    )
    backend = make_backend(mode="exec", command=[PY, "-c", script, "{port}"], stop_grace="300ms")
    await backend.prepare()
    inst = await backend.start("exec-stubborn")
    await asyncio.sleep(0.5)  # let it install the handler
    t0 = time.monotonic()
    await backend.stop(inst, "test")
    assert not is_running(inst.handle)
    assert time.monotonic() - t0 < 5.0


def _pids_in_group(pgid: int) -> list[int]:
    from forkproxy.backends.process._procfs import all_pids

    found = []
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(pid)
    return found


async def test_a_huge_stderr_line_does_not_hide_the_exit(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    script = (
        "import sys; sys.stderr.write('x' * 300000); sys.stderr.write('\\nlast words'); sys.exit(4)"
    )
    backend = make_backend(mode="exec", command=[PY, "-c", script, "{port}"])
    await backend.prepare()
    inst = await backend.start("exec-loud")
    assert await deaths(ctx).wait_for(inst.id, 20.0) == "exited:4: last words"


async def test_leftover_commands_are_listed_and_stopped(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    crashed = make_backend(mode="exec", command=exec_command())  # forgotten, never closed
    await crashed.prepare()
    old = await crashed.start("old-exec")
    await wait_serving(old.endpoint.url + "/")
    successor = make_backend(
        context=recording_context(ctx.pool_name), mode="exec", command=exec_command()
    )
    found = {i.id: i for i in await successor.list()}
    assert found["old-exec"].owner_id == ctx.owner_id
    assert found["old-exec"].endpoint.port == old.endpoint.port
    await successor.stop(found["old-exec"], "orphan")
    assert not is_running(old.handle)
    assert await successor.list() == []
