"""Benchmark helpers that touch the OS: the generated nginx config, PSS and process trees."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from forkproxy.loadtest.run import goproxy, haproxy, nginx, peers
from forkproxy.loadtest.run.procs import REPO
from forkproxy.loadtest.sections.memory import descendants, instance_pids, pss_kib


def test_generated_nginx_config_is_valid(tmp_path: Path) -> None:
    binary = nginx.nginx_path()
    if binary is None:
        if os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") == "1":
            pytest.fail("nginx not installed and FORKPROXY_REQUIRE_BENCH_TOOLS=1")
        pytest.skip("nginx not installed (apt-get install nginx)")
    conf = nginx.write_conf(tmp_path / "ng", 18080, 18081)
    text = conf.read_text()
    assert "keepalive 1024;" in text and 'proxy_set_header Connection "";' in text
    argv = [*nginx.nginx_argv(binary, conf), "-t"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _require(binary: str, package: str) -> None:
    if shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"):
        return
    if os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") == "1":
        pytest.fail(f"{binary} not installed and FORKPROXY_REQUIRE_BENCH_TOOLS=1")
    pytest.skip(f"{binary} not installed (apt-get install {package})")


def test_generated_haproxy_config_is_valid(tmp_path: Path) -> None:
    _require("haproxy", "haproxy")
    binary = haproxy.haproxy_path()
    assert binary is not None
    conf = haproxy.write_conf(tmp_path / "hp", 18080, 18081)
    text = conf.read_text()
    assert "http-reuse always" in text and "nbthread 1" in text
    proc = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(330)
async def test_go_reverse_proxy_builds_and_forwards(tmp_path: Path) -> None:
    """The Go peer is a real httputil.ReverseProxy: built in GOPATH mode, it forwards to an
    aiohttp app and back, headers and body intact."""
    _require("go", "golang-go")
    binary = await goproxy.build()
    assert binary == await goproxy.build()  # cached: built once per source and Go version

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hi {request.headers.get('X-Forwarded-For')}")

    app = web.Application()
    app.router.add_get("/healthz", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app_port = runner.addresses[0][1]
    try:
        async with contextlib.AsyncExitStack() as stack:
            peer = next(p for p in peers.PEERS if p.name == "go")
            url, command = await peers.start(peer, stack, tmp_path, app_port)
            assert command.startswith("go: GOMAXPROCS=1 ")
            async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as resp:
                assert resp.status == 200
                assert await resp.text() == "hi 127.0.0.1"
    finally:
        await runner.cleanup()


def test_pss_and_process_tree_of_a_real_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in descendants(os.getpid())
        own = pss_kib(os.getpid())
        assert own is not None and own > 0
    finally:
        child.kill()
        child.wait()
    assert pss_kib(child.pid) is None  # gone: no PSS, no crash


def test_instance_pids_from_admin_meta() -> None:
    insts = [{"meta": {"pid": "12"}}, {"meta": {"kind": "docker"}}, {"meta": {"pid": "x"}}]
    assert instance_pids(insts) == [12]


def test_unknown_shape_is_refused_by_the_locustfile() -> None:
    env = {**os.environ, "FORKPROXY_SHAPE": "wave", "PYTHONPATH": str(REPO)}
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        "loadtest/load/locustfile.py",
        "--headless",
        "--host",
        "http://127.0.0.1:9",
        "-t",
        "1s",
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert (
        "FORKPROXY_SHAPE='wave': choose one of none, step, spike, sine" in proc.stderr + proc.stdout
    )
