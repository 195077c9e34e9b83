"""Issue 10: no byte reaches an instance without the proxy's parser framing it, and a
response owns exactly its bytes. Driven over raw sockets against scripted_instance.py
(it frames what it gets with h11 and records it); what clients receive is judged with
h11 too, never with llhttp."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.proxy.hardening.conftest import exchange, metric
from tests.proxy.hardening.strict import Scripted, judge, scripted

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: internal.example\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
WS = (
    b"GET %b HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def test_refused_websocket_never_forwards_what_followed_the_head(tmp_path: Path) -> None:
    """Case 1: bytes after an upgrade head are held until the 101; refused, they are
    never forwarded (the connection closes with the answer)."""
    s = Scripted(tmp_path)
    refuse = s.script("refuse", b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, WS % refuse.encode() + b"\r\n" + SMUGGLED)
        got = judge(ex.data, ["GET"])
        assert [a.status for a in got.answers] == [426] and ex.closed
        assert s.targets() == [refuse]


async def test_websocket_head_with_a_body_is_plain_http_framed_by_its_length(
    tmp_path: Path,
) -> None:
    """Case 1, body variant: a handshake with a Content-Length body is not tunnelled;
    the body goes to the instance as the body (Upgrade stripped), never as a request."""
    s = Scripted(tmp_path)
    refuse = s.script("refuse", b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
    head = WS % refuse.encode() + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, head + SMUGGLED, timeout=3)
        got = judge(ex.data, ["GET"])
        assert [a.status for a in got.answers] == [426]
        (rec,) = s.requests()
        assert rec["target"] == refuse and rec["body"] == SMUGGLED.decode()
        assert "upgrade" not in [n.lower() for n, _ in rec["headers"]]


H2C = (
    b"POST /first HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_h2c_upgrade_body_is_framed_not_parsed_as_a_request(
    tmp_path: Path, framing: str
) -> None:
    """Case 2: llhttp ends an upgrade request at its head; the proxy frames the body by
    CL/TE itself, so the instance gets it as the body and the client one answer."""
    s = Scripted(tmp_path)
    if framing == "chunked":
        msg = H2C + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (
            len(SMUGGLED),
            SMUGGLED,
        )
    else:
        msg = H2C + b"Content-Length: %d\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED)
    async with scripted(tmp_path, server={"upstream_header_timeout": "3s"}) as p:
        ex = await exchange(p.proxy.listen_port, msg, timeout=4)
        got = judge(ex.data, ["POST", "GET"])
        assert [a.body for a in got.answers] == [b"/first"], ex.data
        assert got.error is None
        (rec,) = s.requests()
        assert rec["target"] == "/first" and rec["body"] == SMUGGLED.decode()


async def test_h2c_upgrade_then_a_pipelined_request_are_two_requests(tmp_path: Path) -> None:
    s = Scripted(tmp_path)
    msg = H2C + b"Content-Length: 3\r\n\r\nabcGET /second HTTP/1.1\r\nHost: t\r\n\r\n"
    async with scripted(tmp_path) as p:
        ex = await exchange(p.proxy.listen_port, msg, timeout=3)
        got = judge(ex.data, ["POST", "GET"])
        assert [a.body for a in got.answers] == [b"/first", b"/second"]
        assert [(r["target"], r["body"]) for r in s.requests()] == [
            ("/first", "abc"),
            ("/second", ""),
        ]


STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"),
        ("GET", b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
    ],
    ids=["204", "304", "content-length", "chunked", "head", "1xx-then-204"],
)
async def test_bytes_after_a_complete_response_are_never_relayed(
    tmp_path: Path, method: str, answer: bytes
) -> None:
    """Case 4: a second response written after a complete one (same write) is not merged
    into the client's answer, and the next request is answered by the instance afresh."""
    s = Scripted(tmp_path)
    path = s.script("stray", answer + STRAY)
    async with scripted(tmp_path) as p:
        first = b"%b %b HTTP/1.1\r\nHost: t\r\n\r\n" % (method.encode(), path.encode())
        ex = await exchange(
            p.proxy.listen_port, first, b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n", pause=0.3
        )
        got = judge(ex.data, [method, "GET"])
        assert b"SMUGGLED" not in ex.data
        assert got.error is None and len(got.answers) == 2, ex.data
        assert got.answers[0].status == int(answer.split(b" ")[1]) or answer.startswith(
            b"HTTP/1.1 103"
        )
        assert got.answers[1].body == b"/next"


async def test_partial_extra_message_does_not_poison_the_next_client(tmp_path: Path) -> None:
    """Case 5: half a message after a complete response: that connection is closed, so a
    different client's request goes out on a fresh one and gets its own answer."""
    s = Scripted(tmp_path)
    path = s.script(
        "partial", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Le"
    )
    async with scripted(tmp_path, server={"upstream_header_timeout": "3s"}) as p:
        ex = await exchange(
            p.proxy.listen_port, b"GET %b HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode(), timeout=1
        )
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"ok"]
        ex = await exchange(
            p.proxy.listen_port, b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n", timeout=2
        )
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"/other"]


async def test_early_hints_reach_http11_clients_only(tmp_path: Path) -> None:
    s = Scripted(tmp_path)
    path = s.script(
        "hints",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        pause=0.1,
    )
    async with scripted(tmp_path) as p:
        ex = await exchange(
            p.proxy.listen_port, b"GET %b HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode(), timeout=1
        )
        (a,) = judge(ex.data, ["GET"]).answers
        assert a.informational == [103] and a.status == 200 and a.body == b"ok"
        assert b"rel=preload" in ex.data
        ex = await exchange(
            p.proxy.listen_port, b"GET %b HTTP/1.0\r\nHost: t\r\n\r\n" % path.encode(), timeout=1
        )
        assert ex.data.startswith(b"HTTP/1.1 200 ")


async def test_no_100_continue_for_an_http10_client(tmp_path: Path) -> None:
    async with scripted(tmp_path) as p:
        msg = b"POST /x HTTP/1.0\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        ex = await exchange(p.proxy.listen_port, msg, b"hello", pause=0.3, timeout=2)
        assert ex.data.startswith(b"HTTP/1.1 200 ") and b" 100 " not in ex.data
        assert Scripted(tmp_path).requests()[0]["body"] == "hello"


async def test_malformed_answers_are_not_strikes_against_the_instance(tmp_path: Path) -> None:
    """A 101 to a plain GET (or any malformed answer) is a 502 for that request; the
    instance answered, so it is no evidence it is dead and is never stopped for it."""
    s = Scripted(tmp_path)
    path = s.script(
        "bad101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    async with scripted(tmp_path) as p:
        for _ in range(4):
            ex = await exchange(
                p.proxy.listen_port,
                b"GET %b HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode(),
                timeout=2,
            )
            assert [a.status for a in judge(ex.data, ["GET"]).answers] == [502]
        await asyncio.sleep(0.5)
        assert await metric(p, "forkproxy_instance_stops_total", reason="unreachable") == 0
        ex = await exchange(p.proxy.listen_port, b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n", timeout=2)
        assert [a.body for a in judge(ex.data, ["GET"]).answers] == [b"/ok"]
        assert await metric(p, "forkproxy_instance_starts_total") == 1
