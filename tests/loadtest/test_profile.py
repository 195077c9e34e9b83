"""The data-path section's profile: py-spy's raw output (--threads --nolineno) folded into
top frames by self and cumulative time, main thread only; and a real py-spy run against a
busy Python process when py-spy is installed and may attach."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from forkproxy.loadtest.sections import profile

MAIN = "thread (100): MainThread;_run_module_as_main (<frozen runpy>);main (proxy/cli.py)"
RAW = f"""{MAIN};Forwarder.relay (proxy/http/forward.py);write (libc.so.6) 6
{MAIN};Forwarder.relay (proxy/http/forward.py);0x7f00aa (libc.so.6) 1
{MAIN};RequestParsing.data_received (proxy/http/parsing.py);read (libc.so.6) 3
thread (200): ThreadPoolExecutor-0_0;_worker (concurrent/futures/thread.py) 90
garbage line
"""


def test_main_thread_only_self_and_cumulative_shares() -> None:
    prof = profile.aggregate(RAW)
    assert prof.samples == 10  # the pool thread's 90 idle samples are not the event loop
    assert prof.self_time == [
        ("write (libc.so.6)", 0.6),
        ("read (libc.so.6)", 0.3),
        ("[native] libc.so.6", 0.1),  # unnamed native frames add up by library
    ]
    # Python functions only; frames on every stack (runpy, main) say nothing
    assert prof.cumulative == [
        ("Forwarder.relay (proxy/http/forward.py)", 0.7),
        ("RequestParsing.data_received (proxy/http/parsing.py)", 0.3),
    ]


def test_nothing_sampled() -> None:
    assert profile.aggregate("").samples == 0


# A script file, not `-c`: the cumulative table keeps Python frames of .py files only. Two
# functions share the loop so neither is on (nearly) every stack, which the table drops as a
# root; a bare `sum(); sleep(0)` loop spends its samples in clock_nanosleep and named its own
# frame only when a sample happened to land between two native calls (CI failed on that).
_BUSY = """import time
def spin():
    n = 0
    for i in range(20000):
        n += i
    return n
def nap():
    time.sleep(0.002)
while True:
    spin()
    nap()
"""


@pytest.mark.skipif(profile.py_spy_path() is None, reason="py-spy is not installed")
async def test_real_py_spy_samples_a_busy_process(tmp_path: Path) -> None:
    script = tmp_path / "busy.py"
    script.write_text(_BUSY)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script))
    try:
        py_spy = profile.py_spy_path()
        assert py_spy is not None
        out = tmp_path / "p.raw"
        why = await profile._record(py_spy, proc.pid, out)
        if why is not None and "ptrace" in why:
            pytest.skip(why)  # not root / no CAP_SYS_PTRACE here: the section skips the same way
        assert why is None
        prof = profile.aggregate(out.read_text())
        assert prof.samples > 100
        shares = dict(prof.cumulative)
        # both halves of the loop are seen, each a real share of the samples
        assert shares.get("spin (busy.py)", 0) > 0.05, prof.cumulative
        assert shares.get("nap (busy.py)", 0) > 0.05, prof.cumulative
    finally:
        proc.kill()
        await proc.wait()
