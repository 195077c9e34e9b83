"""Issue 10, case 2 against what users run: gunicorn (gthread workers, keep-alive) with
a WSGI app that answers before reading the body."""

from __future__ import annotations

from pathlib import Path

from tests.proxy.hardening.conftest import exchange, gunicorn
from tests.proxy.hardening.strict import judge

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: internal.example\r\n\r\n"


async def test_h2c_body_never_becomes_a_request_or_eats_the_next_one(tmp_path: Path) -> None:
    h2c = (
        b"POST /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED)
    )
    async with gunicorn(
        "tests.proxy.hardening.wsgi_app:app",
        *("--threads", "4", "--keep-alive", "30"),
        server={"upstream_header_timeout": "3s"},
    ) as p:
        a = await exchange(p.proxy.listen_port, h2c, timeout=2)
        b = await exchange(p.proxy.listen_port, b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n", timeout=4)
        assert [x.body for x in judge(a.data, ["POST", "GET"]).answers] == [b"/a"]
        assert [x.body for x in judge(b.data, ["GET"]).answers] == [b"/b"]
        assert b"smuggled" not in a.data + b.data
