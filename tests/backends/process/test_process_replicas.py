"""Two fork-mode proxies with one pool name (tests/replicas.py): B's startup scan no
longer kills A's template or forks; a SIGKILLed replica leaves no process behind."""

from __future__ import annotations

from collections.abc import Callable

from forkproxy.backends.process import _procfs, leftovers
from tests.conftest import ProxyProcess
from tests.proxy import test_lifecycle
from tests.replicas import run_scenario

CONFIG = test_lifecycle.CONFIG.replace(
    "[pool]\n", '[pool]\nmin_instances = 1\norphan_timeout = "6s"\n'
)


async def test_fork_replicas_share_a_pool_name(
    proxy_process: Callable[[str], ProxyProcess], tmp_path: object
) -> None:
    name = f"replicas-{id(tmp_path) % 10**8}"

    async def left_of(owner: str) -> int:
        return sum(
            1
            for pid in _procfs.all_pids()
            if (env := _procfs.read_environ(pid))
            and env.get(leftovers.OWNER_VAR) == owner
            and _procfs.is_running(pid)
        )

    text = CONFIG.format(name=name, max_c=10, mode="fork")
    await run_scenario(proxy_process, text, "/io?ms=3000", left_of, 6)
