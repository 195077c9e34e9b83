"""Issue 21, item 6, against a real WSGI server: client-address headers from a client that
is not a trusted proxy, and header names with underscores, never reach the app's environ.
gunicorn runs with --header-map dangerous: the mapping of gunicorn < 22 and of servers that
fold "_" and "-" together (X_Forwarded_For becomes HTTP_X_FORWARDED_FOR)."""

from __future__ import annotations

import pytest

from tests.proxy.hardening.conftest import exchange, gunicorn

FORGED = "6.6.6.6"
# the list, spelled out here so the test does not follow the code's default
DROP_CLIENT_HEADERS = (
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "x-forwarded-server",
)


# gunicorn < 22 mapped "_" in header names to the same CGI variable as "-"; this keeps it
ENVIRON_APP = "tests.proxy.hardening.environ_app:app"
DANGEROUS = ("--header-map", "dangerous")


def _cgi(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


async def _environ(port: int) -> dict[str, str]:
    # names in mixed case, as a client may send them
    forged = "".join(f"{n.title()}: {FORGED}\r\n" for n in DROP_CLIENT_HEADERS)
    ex = await exchange(
        port,
        (
            "GET / HTTP/1.1\r\nHost: app.example\r\nX-Keep: 1\r\n"
            f"{forged}X_Forwarded_For: {FORGED}\r\nX_Real_IP: {FORGED}\r\n"
            "Content_Length: 5\r\nConnection: close\r\n\r\n"
        ).encode(),
    )
    (resp,) = ex.responses
    assert resp.status == 200, resp
    env: dict[str, str] = resp.json()
    return env


@pytest.mark.asyncio
async def test_untrusted_client_headers_never_reach_the_app() -> None:
    async with gunicorn(ENVIRON_APP, *DANGEROUS) as p:
        env = await _environ(p.proxy.listen_port)
    assert env["HTTP_X_KEEP"] == "1"
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert env["HTTP_X_REAL_IP"] == "127.0.0.1"  # set by the proxy: the peer
    leaked = {k: v for k, v in env.items() if FORGED in v}
    assert not leaked, leaked
    for name in DROP_CLIENT_HEADERS:
        if name != "x-real-ip":
            assert _cgi(name) not in env, name
    assert "CONTENT_LENGTH" not in env, env  # a GET without a body: Content_Length dropped


@pytest.mark.asyncio
async def test_trusted_proxy_keeps_them_and_underscores_stay_dropped() -> None:
    async with gunicorn(ENVIRON_APP, *DANGEROUS, server={"trusted_proxies": ["127.0.0.0/8"]}) as p:
        env = await _environ(p.proxy.listen_port)
    for name in DROP_CLIENT_HEADERS:
        assert env[_cgi(name)] == FORGED, name
    # underscores_in_headers is about the app's name mapping, not about trust
    assert env["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert "CONTENT_LENGTH" not in env, env
