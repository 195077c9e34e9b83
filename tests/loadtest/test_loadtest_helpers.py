"""Benchmark helpers that touch the OS: the generated nginx config, PSS and process trees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.run import nginx
from loadtest.run.procs import REPO
from loadtest.sections.memory import descendants, instance_pids, pss_kib


def test_generated_nginx_config_is_valid(tmp_path: Path) -> None:
    binary = nginx.nginx_path()
    if binary is None:
        if os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") == "1":
            pytest.fail("nginx not installed and FORKPROXY_REQUIRE_BENCH_TOOLS=1")
        pytest.skip("nginx not installed (apt-get install nginx)")
    conf = nginx.write_conf(tmp_path / "ng", 18080, 18081)
    text = conf.read_text()
    assert "keepalive 128;" in text and 'proxy_set_header Connection "";' in text
    argv = [*nginx.nginx_argv(binary, conf), "-t"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


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
