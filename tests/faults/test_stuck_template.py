"""A fork template that takes no messages (stopped, wedged): a stop still ends the
instance within its grace periods, by pid."""

from __future__ import annotations

import os
import signal
import time
import uuid

from forkproxy.backends.process import create_backend
from forkproxy.backends.process._procfs import is_running
from forkproxy.backends.support.kill import KILL_WAIT
from tests.backends.contract import recording_context
from tests.backends.process.helpers import process_config


async def test_a_stop_kills_the_instance_by_pid_when_the_template_is_stuck() -> None:
    ctx = recording_context(f"faults-{uuid.uuid4().hex[:8]}", start_timeout=20.0)
    backend = create_backend(
        process_config(mode="fork", app="tests.faults.apps:tiny_app", stop_grace="1s"), ctx
    )
    await backend.prepare()
    inst = await backend.start("stuck-tpl")
    pid, tpl = int(inst.meta["pid"]), int(inst.meta["template_pid"])
    os.kill(tpl, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        await backend.stop(inst, "idle")
        took = time.monotonic() - t0
        assert not is_running(pid), "the instance outlived its stop"
        assert took < 1.0 + KILL_WAIT, took
    finally:
        os.kill(tpl, signal.SIGCONT)
        await backend.aclose()
    assert not is_running(tpl)
