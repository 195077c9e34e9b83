"""FastAPI websockets in fork mode: the asgi extra brings a websocket library (without
one uvicorn answers every websocket route 404), and check-config warns when an ASGI app
has websocket routes but no library is installed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import aiohttp
import pytest

from forkproxy.backends.process.child import check_app
from tests.backends.process.fastapi_app import app as fastapi_app
from tests.conftest import ROOT, run_proxy

FASTAPI = {"type": "process", "mode": "fork", "app": "tests.backends.process.fastapi_app:app"}


async def test_a_fastapi_websocket_echoes_through_the_proxy() -> None:
    async with run_proxy(backend=FASTAPI) as p:
        async with p.session.get(p.url + "/") as r:
            assert (r.status, await r.json()) == (200, {"hello": "fastapi"})
        async with p.session.ws_connect(p.url + "/ws") as ws:
            await ws.send_str("hi")
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "echo: hi")


def test_websocket_routes_without_a_library_are_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_app.websocket_warning(fastapi_app) is None  # websockets is installed here
    monkeypatch.setattr(check_app, "_WS_LIBRARIES", ("no_such_ws_library",))
    warning = check_app.websocket_warning(fastapi_app)
    assert warning is not None and warning.startswith("websocket routes (/ws) but no websocket")
    assert "forkproxy[asgi]" in warning


def test_the_asgi_extra_brings_a_websocket_library() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    asgi = project["optional-dependencies"]["asgi"]
    assert any(dep.startswith(("websockets", "wsproto")) for dep in asgi), asgi


def test_check_config_builds_a_fastapi_app_without_a_warning(tmp_path: Path) -> None:
    cfg = tmp_path / "fastapi.toml"
    cfg.write_text('[backend]\ntype = "process"\napp = "tests.backends.process.fastapi_app:app"\n')
    res = subprocess.run(
        [sys.executable, "-m", "forkproxy", "check-config", "--no-ports", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr
