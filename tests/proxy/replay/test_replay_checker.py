"""The replay suite's judges on recorded bytes (pure logic): once the proxy is fixed the
suite passes, and these keep showing that it would still see the attacks."""

from __future__ import annotations

from tests.proxy.replay.marker import answer, late
from tests.proxy.replay.wire import frame, ids, server_seen, unframed

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nX-Req-Id: a-s\r\nHost: t\r\n\r\n"
CONNECT = b"CONNECT /x HTTP/1.1\r\nX-Req-Id: a-m\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (
    len(SMUGGLED),
    SMUGGLED,
)


def reply(method: str, target: str, rid: str, body: bytes = b"") -> bytes:
    status, headers, out = answer(method, target, rid, body)
    head = b"".join(b"%b: %b\r\n" % (n.encode(), v.encode()) for n, v in headers)
    return b"HTTP/1.1 %d X\r\n%b\r\n%b" % (status, head, out)


def test_connect_body_is_framed_as_its_body_not_as_a_request() -> None:
    (req,), error = frame(CONNECT)
    assert error is None and (req.method, req.rid, req.body_len) == (
        "CONNECT",
        "a-m",
        len(SMUGGLED),
    )


def test_a_server_that_tunnels_connect_is_caught_twice() -> None:
    """aiohttp / uvicorn-httptools: the CONNECT without its body, then the body as a
    request: both are reported."""
    s2c = reply("CONNECT", "/x", "a-m") + reply("GET", "/smuggled", "a-s")
    found = [why for _, why in unframed(CONNECT, s2c)]
    assert len(found) == 2, found
    assert "where the proxy sent" in found[0] and "never sent" in found[1]


def test_a_server_that_reads_the_body_passes() -> None:
    assert unframed(CONNECT, reply("CONNECT", "/x", "a-m", SMUGGLED)) == []
    pipelined = CONNECT + b"GET /n HTTP/1.1\r\nX-Req-Id: b\r\nHost: t\r\n\r\n"
    s2c = reply("CONNECT", "/x", "a-m", SMUGGLED) + reply("GET", "/n", "b")
    assert [r.rid for r in server_seen(s2c)] == ["a-m", "b"]
    assert unframed(pipelined, s2c) == []


def test_late_bytes_carry_their_owner() -> None:
    assert ids(late("a-m")) == ["a-m", "a-m"]
    assert ids(reply("GET", "/v", "v1")) == ["v1", "v1"]
