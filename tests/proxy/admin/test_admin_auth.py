"""The admin listener's access: loopback by default, a warning when bound elsewhere
without a token, and a bearer token (from an env var or a file) on every route."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from forkproxy.backends.support.table import ConfigError
from forkproxy.proxy import top
from forkproxy.proxy.admin import COOKIE, admin_app
from forkproxy.proxy.config import parse
from forkproxy.proxy.server import Proxy
from tests.conftest import ROOT, Running, proxy_config, run_proxy

TOKEN = "s3cret-token-for-tests"


def _paths(p: Running) -> list[str]:
    """Every route the admin app serves (read from its router, so a new one is covered)."""
    runner = p.proxy._admin
    assert runner is not None
    out = []
    for resource in runner.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info["formatter"].replace("{name}", "page.js")
        out.append(path)
    assert {"/", "/events", "/metrics", "/healthz", "/readyz", "/instances"} <= set(out)
    return out


async def _status(session: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    # /events streams forever: the status line is all that is needed
    async with session.get(url, allow_redirects=False, **kw) as r:
        return r.status


async def test_default_is_loopback_and_open() -> None:
    cfg = parse(proxy_config())
    assert cfg.server.admin is not None and cfg.server.admin.host == "127.0.0.1"
    assert parse({}).server.admin is not None
    assert parse({}).server.admin.host == "127.0.0.1"  # type: ignore[union-attr]
    async with run_proxy() as p:
        for path in _paths(p):
            assert await _status(p.session, p.admin + path) == 200, path


async def test_bearer_token_from_env_guards_every_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORKPROXY_TEST_ADMIN_TOKEN", TOKEN)
    async with run_proxy(server={"admin_token_env": "FORKPROXY_TEST_ADMIN_TOKEN"}) as p:
        good = {"Authorization": f"Bearer {TOKEN}"}
        for path in [*_paths(p), "/no-such-route"]:
            url = p.admin + path
            assert await _status(p.session, url) == 401, path
            assert await _status(p.session, url, headers={"Authorization": "Bearer nope"}) == 401
            assert await _status(p.session, url, headers={"Authorization": TOKEN}) == 401
            assert await _status(p.session, url, params={"token": "nope"}) == 401
            assert await _status(p.session, url, headers=good) == (
                404 if path == "/no-such-route" else 200
            ), path
        async with p.session.get(p.admin + "/metrics") as r:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert TOKEN not in await r.text()


async def test_browser_login_sets_a_cookie_for_the_page_and_its_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORKPROXY_TEST_ADMIN_TOKEN", TOKEN)
    async with run_proxy(server={"admin_token_env": "FORKPROXY_TEST_ADMIN_TOKEN"}) as p:
        # aiohttp keeps cookies of IP hosts only when told to (a browser does it anyway)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.get(p.admin + "/?token=" + TOKEN, allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/"
                cookie = r.cookies[COOKIE]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            for path in _paths(p):
                assert await _status(browser, p.admin + path) == 200, path
            # the token is accepted in the URL of the page only, not of the data
            async with aiohttp.ClientSession() as other:
                assert await _status(other, p.admin + "/instances?token=" + TOKEN) == 401


async def test_bearer_token_from_file(tmp_path: Path) -> None:
    f = tmp_path / "admin.token"
    f.write_text(TOKEN + "\n")
    async with run_proxy(server={"admin_token_file": str(f)}) as p:
        assert await _status(p.session, p.admin + "/instances") == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert await _status(p.session, p.admin + "/instances", headers=headers) == 200


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ({"admin_token_env": "FORKPROXY_TEST_UNSET_TOKEN"}, "server.admin_token_env"),
        ({"admin_token_file": "/nonexistent/admin.token"}, "server.admin_token_file"),
    ],
)
def test_missing_token_is_a_clear_error(server: dict[str, str], key: str) -> None:
    os.environ.pop("FORKPROXY_TEST_UNSET_TOKEN", None)
    proxy = Proxy(parse(proxy_config(server=server)))
    with pytest.raises(ConfigError) as err:
        admin_app(proxy.admin_view())
    assert [p.path for p in err.value.problems] == [key]


def test_both_token_sources_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="admin_token_file"):
        parse(proxy_config(server={"admin_token_env": "X", "admin_token_file": "/x"}))


def test_cli_reports_a_missing_token_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('[server]\nadmin_token_env = "FORKPROXY_TEST_UNSET_TOKEN"\n')
    env = {k: v for k, v in os.environ.items() if k != "FORKPROXY_TEST_UNSET_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "forkproxy", "run", "-c", str(cfg), "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "server.admin_token_env" in out.stderr
    assert "FORKPROXY_TEST_UNSET_TOKEN" in out.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_non_loopback_admin_warns_without_token(
    host: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # built, not bound: the warning comes from assembling the admin app
    addr = f"[{host}]:0" if ":" in host else f"{host}:0"
    with caplog.at_level(logging.WARNING, "forkproxy.admin"):
        admin_app(Proxy(parse(proxy_config(server={"admin": addr}))).admin_view())
    assert any("no authentication" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setenv("FORKPROXY_TEST_ADMIN_TOKEN", TOKEN)
    server = {"admin": addr, "admin_token_env": "FORKPROXY_TEST_ADMIN_TOKEN"}
    with caplog.at_level(logging.WARNING, "forkproxy.admin"):
        admin_app(Proxy(parse(proxy_config(server=server))).admin_view())
        admin_app(Proxy(parse(proxy_config(server={"admin": "127.0.0.1:0"}))).admin_view())
        admin_app(Proxy(parse(proxy_config(server={"admin": "[::1]:0"}))).admin_view())
    assert not caplog.records


async def test_top_sends_the_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORKPROXY_TEST_ADMIN_TOKEN", TOKEN)
    async with run_proxy(server={"admin_token_env": "FORKPROXY_TEST_ADMIN_TOKEN"}) as p:
        with pytest.raises(RuntimeError, match="401"):
            await top.first_sample(p.admin)
        assert (await top.first_sample(p.admin, TOKEN))["owner"] == p.proxy.owner_id
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        env = {k: v for k, v in os.environ.items() if k != top.TOKEN_ENV}
        cmd = [sys.executable, "-m", "forkproxy", "top", "--once", p.admin]
        for extra, extra_env, code in (
            ([], {}, 1),
            ([], {top.TOKEN_ENV: TOKEN}, 0),
            (["--token-file", str(token_file)], {}, 0),
        ):
            out = await asyncio.to_thread(
                subprocess.run,
                cmd + extra,
                cwd=ROOT,
                env={**env, **extra_env},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == code, out.stderr
            assert ("401" in out.stderr) == (code == 1)
            assert (p.proxy.owner_id in out.stdout) == (code == 0)
