"""Errors a person can act on, before traffic: `forkproxy check-config` builds the app,
resolves the command and tries the ports; `forkproxy run` says in one line (with the key)
why it cannot start, before "forkproxy stopped"; bad values get a clear message."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from forkproxy.proxy.config import Config
from tests.conftest import ROOT, free_port, run_proxy


def forkproxy(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forkproxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return str(path)


def problems(out: str) -> list[str]:
    """The indented problem lines of a config report."""
    return [line.strip() for line in out.splitlines() if line.startswith("  ")]


def errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if " ERROR " in line]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


FORK = '[server]\nlisten = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n[backend]\ntype = "process"\n'
DEMO = FORK + 'app = "examples.app:create_app"\n'


def test_check_config_builds_the_fork_app_in_a_throwaway_interpreter(tmp_path: Path) -> None:
    cfg = write(tmp_path, FORK + 'app = "nosuch_mod:create_app"\n')
    res = forkproxy("check-config", cfg)
    assert res.returncode == 2
    assert problems(res.stderr) == [
        "backend.app: 'nosuch_mod:create_app' cannot be built: "
        "ModuleNotFoundError: No module named 'nosuch_mod'"
    ]
    skipped = forkproxy("check-config", "--no-import", cfg)
    assert skipped.returncode == 0 and "ok" in skipped.stdout


def test_check_config_reports_an_app_that_raises_on_import(tmp_path: Path) -> None:
    (tmp_path / "raising_app.py").write_text('raise RuntimeError("no database configured")\n')
    cfg = write(tmp_path, FORK + f'cwd = "{tmp_path}"\napp = "raising_app:app"\n')
    res = forkproxy("check-config", cfg)
    assert res.returncode == 2
    assert problems(res.stderr) == [
        "backend.app: 'raising_app:app' cannot be built: RuntimeError: no database configured"
    ]


def test_check_config_accepts_a_good_app(tmp_path: Path) -> None:
    res = forkproxy("check-config", write(tmp_path, FORK + 'app = "examples.app:create_app"\n'))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok (backend process, listen 127.0.0.1:0)")


def test_check_config_resolves_the_exec_command(tmp_path: Path) -> None:
    cfg = write(tmp_path, FORK + 'mode = "exec"\ncommand = ["no-such-server", "{port}"]\n')
    res = forkproxy("check-config", cfg)
    assert res.returncode == 2
    (line,) = problems(res.stderr)
    assert line.startswith("backend.command: 'no-such-server' not found on PATH")


@pytest.mark.parametrize("key", ["listen", "admin"])
def test_check_config_finds_a_taken_port(tmp_path: Path, taken_port: int, key: str) -> None:
    text = DEMO.replace(f'{key} = "127.0.0.1:0"', f'{key} = "127.0.0.1:{taken_port}"')
    res = forkproxy("check-config", "--no-import", write(tmp_path, text))
    assert res.returncode == 2
    assert problems(res.stderr) == [f"server.{key}: 127.0.0.1:{taken_port}: address already in use"]
    skipped = forkproxy("check-config", "--no-import", "--no-ports", write(tmp_path, text))
    assert skipped.returncode == 0, skipped.stderr


def test_run_with_a_missing_app_prints_one_line_then_stopped(tmp_path: Path) -> None:
    cfg = write(tmp_path, FORK + 'app = "nosuch_mod:create_app"\n')
    res = forkproxy("run", "--config", cfg)
    assert res.returncode == 3
    assert [e.split(" ERROR ", 1)[1] for e in errors(res.stderr)] == [
        "forkproxy: backend process cannot start: backend.app 'nosuch_mod:create_app' "
        "cannot be built: ModuleNotFoundError: No module named 'nosuch_mod'"
    ]
    assert "Traceback" not in res.stderr
    assert res.stderr.index(" ERROR ") < res.stderr.index("forkproxy stopped")
    debug = forkproxy("run", "--config", cfg, "--log-level", "debug")
    assert debug.returncode == 3
    assert "Traceback (most recent call last)" in debug.stderr


def test_run_with_an_app_raising_on_build(tmp_path: Path) -> None:
    cfg = write(tmp_path, FORK + 'app = "examples.failing_app:create_app"\n')
    res = forkproxy("run", "--config", cfg)
    assert res.returncode == 3
    (line,) = errors(res.stderr)
    assert line.endswith(
        "backend.app 'examples.failing_app:create_app' cannot be built: "
        "RuntimeError: example failure: create_app refuses to build"
    )


@pytest.mark.parametrize("key", ["listen", "admin"])
def test_run_names_the_key_of_a_port_in_use(tmp_path: Path, taken_port: int, key: str) -> None:
    other = "admin" if key == "listen" else "listen"
    args = [f"--{key}", f"127.0.0.1:{taken_port}", f"--{other}", f"127.0.0.1:{free_port()}"]
    res = forkproxy("run", "--config", write(tmp_path, DEMO), *args)
    assert res.returncode == 3
    (line,) = errors(res.stderr)
    assert line.endswith(
        f"forkproxy: cannot listen: server.{key} (127.0.0.1:{taken_port}): address already in use"
    )
    assert res.stderr.index(" ERROR ") < res.stderr.index("forkproxy stopped")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nshutdown_timeout = "-3s"\n', "server.shutdown_timeout: '-3s': must not be"),
        ('[pool]\nidle_ttl = "-1m"\n', "pool.idle_ttl: '-1m': must not be negative"),
        ("[server]\nmax_url_size = 0\n", "server.max_url_size: 0 is below the minimum 256 bytes"),
        (
            '[server]\nmax_header_size = "100"\n',
            "server.max_header_size: '100' is below the minimum 1024 bytes",
        ),
        ('[server]\nmax_body_size = "-1k"\n', "server.max_body_size: '-1k': must not be"),
    ],
)
def test_bad_values_get_a_clear_message(tmp_path: Path, text: str, expected: str) -> None:
    for command in (["check-config"], ["run", "--config"]):
        res = forkproxy(*command, write(tmp_path, text))
        assert res.returncode == 2
        (line,) = problems(res.stderr)
        assert line.startswith(expected), line


async def test_keepalive_timeout_zero_disables_keepalive_as_in_nginx() -> None:
    async with run_proxy(server={"keepalive_timeout": 0}) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.proxy.listen_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        assert head.startswith("HTTP/1.1 200")
        assert re.search(r"(?im)^connection: close\r$", head)
        await reader.read()  # the proxy closes after the response
        assert reader.at_eof()
        writer.close()
        async with aiohttp.ClientSession() as s, s.get(p.url + "/") as r:
            assert r.status == 200


def test_check_config_refuses_a_fork_config_without_its_app(tmp_path: Path) -> None:
    res = forkproxy("check-config", "--no-ports", write(tmp_path, FORK))
    assert res.returncode == 2
    (line,) = problems(res.stderr)
    assert line.startswith('backend.app: missing: name your app, e.g. app = "')


THREADED_WSGI = """
import threading

threading.Thread(target=threading.Event().wait, name="metrics-flusher", daemon=True).start()


def app(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
"""


def test_check_config_refuses_threads_started_at_import_as_run_does(tmp_path: Path) -> None:
    (tmp_path / "threaded_wsgi.py").write_text(THREADED_WSGI)
    cfg = write(tmp_path, FORK + 'cwd = "."\napp = "threaded_wsgi:app"\n')
    checked = forkproxy("check-config", "--no-ports", cfg)
    assert checked.returncode == 2
    (line,) = problems(checked.stderr)
    assert "started threads in the template (metrics-flusher)" in line
    assert "post_fork" in line and "on_startup" not in line  # a WSGI app has no on_startup
    ran = forkproxy("run", "--config", cfg)
    assert ran.returncode == 3
    (error,) = errors(ran.stderr)
    assert "started threads in the template (metrics-flusher)" in error and "post_fork" in error


def test_check_config_reads_cwd_against_the_files_directory(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "src").mkdir(parents=True)
    (site / "src" / "hello.py").write_text(
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'hi']\n"
    )
    (site / "forkproxy.toml").write_text(
        DEMO.replace("app = ", "# ") + 'cwd = "src"\napp = "hello:app"\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "forkproxy", "check-config", "--no-ports", "site/forkproxy.toml"],
        cwd=tmp_path,  # not where the file is: cwd = "src" still means site/src
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


SLOW = "import time\ntime.sleep(30)\nfrom examples.app import create_app\n"


def test_run_says_a_port_is_taken_before_a_slow_import(tmp_path: Path, taken_port: int) -> None:
    (tmp_path / "slow_app.py").write_text(SLOW)
    text = DEMO.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{taken_port}"')
    cfg = write(
        tmp_path,
        text.replace("app = ", "# ") + f'cwd = "{tmp_path}"\napp = "slow_app:create_app"\n',
    )
    started = time.monotonic()
    res = forkproxy("run", "--config", cfg, timeout=25)
    assert res.returncode == 3
    assert time.monotonic() - started < 15  # the import alone takes 30 s
    (line,) = errors(res.stderr)
    assert line.endswith(
        f"forkproxy: cannot listen: server.listen (127.0.0.1:{taken_port}): address already in use"
    )


def test_the_early_port_check_leaves_a_handover_to_the_bind(
    taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forkproxy.proxy.cli import _ports_taken
    from forkproxy.proxy.config import parse

    def config(port: int) -> Config:
        return parse({"server": {"listen": f"127.0.0.1:{port}", "admin": "off"}})

    assert _ports_taken(config(taken_port)) == (
        f"server.listen (127.0.0.1:{taken_port}): address already in use"
    )
    with socket.socket() as handing_over:  # a predecessor sharing its port (SO_REUSEPORT)
        handing_over.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        handing_over.bind(("127.0.0.1", 0))
        handing_over.listen()
        assert _ports_taken(config(handing_over.getsockname()[1])) is None
    monkeypatch.setenv("LISTEN_FDS", "1")  # systemd hands the listener over
    assert _ports_taken(config(taken_port)) is None


def test_check_config_sends_the_chosen_warm_up_requests(tmp_path: Path) -> None:
    text = FORK + 'app = "examples.flask_app:app"\nwarmup_requests = ["/healthz", "/nope"]\n'
    res = forkproxy("check-config", "--no-ports", write(tmp_path, text))
    assert res.returncode == 0, res.stderr  # a cold page is a warning: run serves anyway
    (warning,) = [line for line in res.stderr.splitlines() if "warning" in line]
    assert warning.startswith("warning: backend.app: warm-up GET /nope: 404 in ")
