"""forkproxy as a real process: SIGTERM drains with zero failed requests, SIGKILL
leaves no instance alive once the next proxy has started, bad configs exit clearly."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import aiohttp
import pytest

from tests.conftest import ROOT, ProxyProcess, eventually, pid_alive

CONFIG = """
[server]
name = "{name}"
shutdown_timeout = "20s"
[pool]
idle_ttl = "60s"
max_concurrency = {max_c}
[backend]
type = "process"
mode = "{mode}"
app = "examples.app:create_app"
"""


async def test_sigterm_drains_in_flight_requests(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    p = proxy_process(CONFIG.format(name="drain-test", max_c=10, mode="fork"))
    await p.start()
    async with aiohttp.ClientSession() as s:
        async with s.get(p.url + "/") as r:
            pid = int(r.headers["X-Pid"])

        async def one() -> int:
            async with s.get(p.url + "/io?ms=1000") as r:
                await r.read()
                return r.status

        reqs = [asyncio.ensure_future(one()) for _ in range(5)]  # noqa: TID251
        await asyncio.sleep(0.3)
        p.signal(signal.SIGTERM)
        statuses = await asyncio.gather(*reqs)
    assert statuses == [200] * 5
    assert await p.wait(20) == 0
    await eventually(lambda: not pid_alive(pid), 5, "instance to stop")
    assert "signal received: draining" in p.log.read_text()


@pytest.mark.parametrize("mode", ["fork", "exec"])
async def test_sigkill_leaves_no_orphan_once_next_proxy_started(
    proxy_process: Callable[[str], ProxyProcess], mode: str
) -> None:
    cfg = CONFIG.format(name=f"kill-test-{mode}", max_c=1, mode=mode)
    first = proxy_process(cfg)
    await first.start()
    pids = []
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.get(first.url + "/io?ms=1500") as r:
                await r.read()
                return int(r.headers["X-Pid"])

        # long enough that the second request outwaits one start, so the pool starts a
        # second instance instead of queueing it behind the first (max_concurrency 1)
        pids = list(set(await asyncio.gather(one(), one())))  # two instances
    assert len(pids) == 2
    first.kill()  # SIGKILL
    second = proxy_process(cfg)
    await second.start()
    await eventually(
        lambda: not any(pid_alive(x) for x in pids), 10, f"{mode} instances to be gone"
    )
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0


def test_bad_config_exits_non_zero_with_key_path(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "bad.toml"
    path.write_text('[pool]\nmax_concurrency = -1\n[backend]\ntype = "process"\nmode = "spawn"\n')
    out = subprocess.run(
        [sys.executable, "-m", "forkproxy", "run", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "pool.max_concurrency" in out.stderr
    assert "backend.mode" in out.stderr and "fork, exec" in out.stderr


async def test_drain_delay_keeps_serving_while_readyz_says_503(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    cfg = CONFIG.format(name="drain-delay-test", max_c=10, mode="fork")
    p = proxy_process(cfg.replace('shutdown_timeout = "20s"', 'drain_delay = "3s"'))
    await p.start()
    async with aiohttp.ClientSession() as s:
        async with s.get(p.url + "/") as r:
            assert r.status == 200
        p.signal(signal.SIGTERM)

        async def not_ready() -> bool:
            async with s.get(p.admin + "/readyz") as r:
                return r.status == 503

        await eventually(not_ready, 2, "/readyz to say 503")
        # a load balancer that has not noticed yet still gets answers
        async with s.get(p.url + "/", headers={"Connection": "close"}) as r:
            assert r.status == 200
    assert await p.wait(30) == 0
    log = p.log.read_text()
    assert "accepting for 3.0s more (drain_delay)" in log


async def test_a_port_taken_before_the_proxy_binds_it_is_tried_again_on_new_ports(
    proxy_process: Callable[[str], ProxyProcess],
) -> None:
    # What docker-proxy or a published swarm port does now and then between free_port()
    # and the proxy's bind: the test helper must not turn that race into a failure.
    p = proxy_process(CONFIG.format(name="port-race", max_c=1, mode="fork"))
    taken = p.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen(1)
        await p.start()
        assert p.port != taken
        async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
            assert r.status == 200
    logs = list(p.log.parent.glob("proxy-*.log"))
    first = p.log.parent / f"proxy-{taken}.log"
    assert first in logs and "address already in use" in first.read_text().lower()
