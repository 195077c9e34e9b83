"""The wheel stands alone: built from this checkout, installed into a fresh venv outside
the repository, `forkproxy run` with no config serves the bundled demo app, every
example passes check-config (a missing extra is named, then installed), `forkproxy
tune --help` works, nothing installed imports `tests` or `examples`, and everything installs
under the one name `forkproxy`: an app with its own top-level `backends`, `proxy` and
`loadtest` packages runs in fork mode."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.backends.process.helpers import REPO
from tests.conftest import free_port

pytestmark = pytest.mark.slow

_FORBIDDEN = re.compile(r"^\s*(from|import)\s+(tests|examples)\b", re.MULTILINE)


def _run(*cmd: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _source_copy(dest: Path) -> Path:
    """Tracked and new files only: the build must not see .venv, results or caches,
    and must not write build/ or *.egg-info into the checkout."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = REPO / name
        if src.is_symlink():  # forkproxy/proxy -> ../proxy: the namespace's checkout shim
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / name)
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp / "dist", src, cwd=tmp
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("forkproxy-*.whl")
    made = _run(sys.executable, "-m", "venv", tmp / "venv", cwd=tmp)
    assert made.returncode == 0, made.stderr
    pip = _run(tmp / "venv/bin/pip", "install", "-q", wheel, cwd=tmp)
    assert pip.returncode == 0, pip.stderr[-3000:]
    (tmp / "venv/wheel").write_text(str(wheel))
    return tmp / "venv"


def _work(tmp_path: Path) -> Path:
    """A directory with nothing of the repository in it."""
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_nothing_installed_imports_tests_or_examples(venv: Path) -> None:
    (site,) = venv.glob("lib/python*/site-packages")
    offenders = [
        str(path.relative_to(site))
        for path in (site / "forkproxy").rglob("*.py")
        if _FORBIDDEN.search(path.read_text())
    ]
    assert offenders == []
    assert (site / "forkproxy/proxy/admin_page").is_dir()
    assert not (site / "tests").exists() and not (site / "examples").exists()
    # one name only: nothing of ours at the top level to collide with an app's packages
    for top in ("proxy", "backends", "loadtest"):
        assert not (site / top).exists(), top


# An app whose own top-level packages carry our folders' names (a Django project's
# `backends` app, say): each module answers with where it was imported from.
_USER_APP = {
    "backends/__init__.py": "",
    "backends/db.py": 'NAME = "the users backends.db"\n',
    "proxy/__init__.py": 'NAME = "the users proxy"\n',
    "loadtest/__init__.py": 'NAME = "the users loadtest"\n',
    "app.py": (
        "import backends.db, loadtest, proxy\n"
        "def application(environ, start_response):\n"
        "    body = ' / '.join((backends.db.NAME, proxy.NAME, loadtest.NAME)).encode()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [body]\n"
    ),
}


def test_an_app_with_its_own_backends_proxy_and_loadtest_packages_runs_in_fork_mode(
    venv: Path, tmp_path: Path
) -> None:
    work = _work(tmp_path)
    for name, text in _USER_APP.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    port = free_port()
    (work / "forkproxy.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin = "off"\n'
        '[backend]\ntype = "process"\nmode = "fork"\napp = "app:application"\n'
    )
    checked = _run(venv / "bin/forkproxy", "check-config", "--no-ports", "forkproxy.toml", cwd=work)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    body, out = _first_answer(venv, work, port, "run", "-c", "forkproxy.toml")
    assert body == b"the users backends.db / the users proxy / the users loadtest", out


def _first_answer(venv: Path, work: Path, port: int, *argv: str) -> tuple[bytes, str]:
    """`forkproxy ARGV` run from `work` (none of the checkout on its path): the body of its
    first GET / (b"" if it never answers) and its output, after a clean SIGTERM exit."""
    proc = subprocess.Popen(
        [venv / "bin/forkproxy", *argv],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    body = b""
    try:
        deadline = time.monotonic() + 30
        while not body and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                    body = resp.read()
            except OSError:
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out
    assert "No module named" not in out
    return body, out


def test_run_without_config_serves_the_bundled_demo(venv: Path, tmp_path: Path) -> None:
    port = free_port()
    work = _work(tmp_path)
    listen = f"127.0.0.1:{port}"
    body, out = _first_answer(venv, work, port, "run", "--listen", listen, "--admin", "off")
    assert body.startswith(b"hello from instance "), out


def test_examples_pass_check_config_and_missing_extras_are_named(
    venv: Path, tmp_path: Path
) -> None:
    work = _work(tmp_path)
    examples = sorted((REPO / "examples").glob("*.toml"))
    for example in examples:
        shutil.copy(example, work)
    forkproxy = venv / "bin/forkproxy"
    for example in examples:  # validating needs no SDK (the example apps are not here,
        # and the example ports may be taken on a shared machine: those checks are off)
        result = _run(
            forkproxy, "check-config", "--no-import", "--no-ports", example.name, cwd=work
        )
        assert result.returncode == 0, (example.name, result.stderr)
    for extra in ("docker", "vsphere"):  # running does: the error names the extra
        result = _run(
            forkproxy,
            "run",
            "-c",
            f"{extra}.toml",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            cwd=work,
            timeout=60,
        )
        assert result.returncode == 3, result.stderr
        assert f"pip install 'forkproxy[{extra}]'" in result.stderr
        assert "No module named" not in result.stderr and "Traceback" not in result.stderr
    # The extras bring everything those backends import (requests included).
    wheel = (venv / "wheel").read_text()
    pip = _run(venv / "bin/pip", "install", "-q", f"{wheel}[docker,vsphere,asgi]", cwd=work)
    assert pip.returncode == 0, pip.stderr[-3000:]
    code = "import forkproxy.backends.docker.backend, forkproxy.backends.vsphere.backend, uvicorn"
    imported = _run(venv / "bin/python", "-c", code, cwd=work)
    assert imported.returncode == 0, imported.stderr
    _asgi_extra_serves_a_websocket(venv, work)


ASGI_ECHO = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        msg = await receive()
        await send({"type": "websocket.send", "text": "echo: " + msg["text"]})
        await send({"type": "websocket.close"})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def _asgi_extra_serves_a_websocket(venv: Path, work: Path) -> None:
    """With only forkproxy[asgi] installed, an ASGI app's websocket is served, not 404."""
    import asyncio

    import aiohttp

    (work / "echo_app.py").write_text(ASGI_ECHO)
    port = free_port()
    (work / "echo.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin = "off"\n'
        '[backend]\ntype = "process"\napp = "echo_app:app"\napp_kind = "asgi"\n'
    )
    proc = subprocess.Popen(
        [venv / "bin/forkproxy", "run", "-c", "echo.toml"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )

    async def echo() -> str:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                        await ws.send_str("hi")
                        return str((await ws.receive(timeout=10)).data)
                except aiohttp.ClientConnectorError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    await asyncio.sleep(0.2)

    try:
        assert asyncio.run(echo()) == "echo: hi"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    assert "No supported WebSocket library" not in out, out


def test_tune_help(venv: Path, tmp_path: Path) -> None:
    result = _run(venv / "bin/forkproxy", "tune", "--help", cwd=_work(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout
