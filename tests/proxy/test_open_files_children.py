"""The proxy raises its own soft RLIMIT_NOFILE (test_open_files.py); what it starts does
not inherit the raise. A real forkproxy started under soft 256 / hard 1024 runs at 1024,
and its instances (exec'd commands; fork instances, their template and the zygote)
report 256, the limit the user gave it: the app's own getrlimit through the proxy, and
/proc/<pid>/limits of every process below the proxy."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable

import pytest

from forkproxy.backends.support import memory, nofile
from tests.conftest import ProxyProcess, get

SOFT, HARD = 256, 1024


def _nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


def _soft_limit(pid: int) -> int | None:
    """None: the process is gone."""
    try:
        with open(f"/proc/{pid}/limits", encoding="ascii") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except FileNotFoundError:
        return None
    raise AssertionError("no Max open files line")


BACKENDS = {
    "exec": f"""mode = "exec"
command = ["{sys.executable}", "-m", "tests.proxy.nofile_app", "--port", "{{port}}"]""",
    "fork": 'mode = "fork"\napp = "tests.proxy.nofile_app:create_app"\nzygote = false',
    "fork-zygote": 'mode = "fork"\napp = "tests.proxy.nofile_app:create_app"\nzygote = true',
}


@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_instances_get_the_limit_the_proxy_was_started_with(
    proxy_process: Callable[[str], ProxyProcess], backend: str
) -> None:
    p = proxy_process(f"""
[pool]
max_instances = 2
min_instances = 0
start_timeout = "30s"
readiness_path = "/healthz"

[backend]
type = "process"
{BACKENDS[backend]}
""")
    p.preexec_fn = _nofile
    await p.start()
    assert p.proc is not None
    assert _soft_limit(p.proc.pid) == HARD  # the proxy raised its own
    status, body = await get(p.url)
    assert (status, body) == (200, str(SOFT))  # the app's own getrlimit
    below = [pid for pid in memory.tree(p.proc.pid) if pid != p.proc.pid]
    kinds = {"exec": 1, "fork": 2, "fork-zygote": 3}  # instance, template, zygote
    limits = {pid: limit for pid in below if (limit := _soft_limit(pid)) is not None}
    assert len(limits) >= kinds[backend], below
    assert limits == dict.fromkeys(limits, SOFT)


def test_the_limit_kept_is_the_first_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # a reload raises again (open_files.prepare): the children still get the first limit
    now = [SOFT]
    monkeypatch.setattr(nofile, "_original", None)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (now[0], HARD))
    assert nofile.original() is None and nofile.limits() is None  # nothing raised
    nofile.remember()
    assert nofile.original() is None  # remembered, but the proxy still runs at it
    now[0] = HARD
    assert nofile.original() == SOFT and nofile.limits() == (SOFT, HARD)
    nofile.remember()
    assert nofile.original() == SOFT
