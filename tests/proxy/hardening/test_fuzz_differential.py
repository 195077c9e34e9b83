"""Differential fuzz (issue 10): pipelined request heads with bodies, upgrades and
framing mutations, against instance answers with stray bytes, 1xx and garbage. The
invariant, checked with h11 on both sides (never llhttp, the proxy's parser):

- the instance receives exactly a prefix of the requests h11 frames from the client's
  bytes (method, target, body), or nothing;
- the client receives, in order, for each of its requests either the instance's answer
  to that very request or a proxy error, and nothing that belongs to another answer.

FORKPROXY_FUZZ_EXAMPLES raises the example count (default 60, well under a minute)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Running
from tests.proxy.hardening.strict import Scripted, judge, scripted

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count(1)
PROXY_ERRORS = (b"Bad Request", b"Bad Gateway", b"Gateway Timeout", b"Request", b"Content Too")
EXTRA_HEADERS = [
    b"Connection: Upgrade\r\nUpgrade: h2c\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"Connection: upgrade, keep-alive\r\nUpgrade: foo/1\r\n",
    b"Expect: 100-continue\r\n",
    b"Content-Length: 7\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 3, 3\r\n",
    b"Host: other\r\n",
    b"X-A: 1\r\n",
]
STRAY = [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED", b"HTTP/1.1 200 OK\r\nCon"]


@dataclass
class Plan:
    wire: bytes  # what the client sends, in one write
    answers: dict[str, bytes]  # target -> the instance's raw answer


@st.composite
def plans(draw: st.DrawFn) -> tuple[list[tuple[str, str, bytes, list[bytes]]], list[int]]:
    reqs = []
    count = draw(st.integers(1, 3))
    for k in range(count):
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT"]))
        # HTTP/1.0 only last: h11 (the reference) ends a connection after an HTTP/1.0
        # request, where the proxy honours its Connection: keep-alive
        version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"])) if k == count - 1 else "1.1"
        body = draw(
            st.sampled_from([b"", b"", b"hello", b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"])
        )
        extras = draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2))
        reqs.append((method, version, body, extras))
    kinds = draw(st.lists(st.integers(0, 11), min_size=len(reqs), max_size=len(reqs)))
    return reqs, kinds


def build(n: int, reqs: list[tuple[str, str, bytes, list[bytes]]], kinds: list[int]) -> Plan:
    wire = b""
    answers: dict[str, bytes] = {}
    for i, ((method, version, body, extras), kind) in enumerate(zip(reqs, kinds, strict=True)):
        target = f"/s/e{n}r{i}"
        head = b"%b %b HTTP/%b\r\nHost: t\r\n" % (
            method.encode(),
            target.encode(),
            version.encode(),
        )
        head += b"".join(extras)
        framed = any(e.startswith((b"Content-Length", b"Transfer-Encoding")) for e in extras)
        if body and not framed:
            chunked = version == "1.1" and kind % 2 == 0
            if chunked:
                head += b"Transfer-Encoding: chunked\r\n"
                body = b"%x;ext=1\r\n%b\r\n0\r\n\r\n" % (len(body), body)
            else:
                head += b"Content-Length: %d\r\n" % len(body)
        elif not framed:
            body = b""
        wire += head + b"\r\n" + body
        token = f"R{i}e{n}".encode()
        answer = [
            b"HTTP/1.1 200 OK\r\nX-T: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (token, len(token), token),
            b"HTTP/1.1 200 OK\r\nX-T: %b\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
            % (token, len(token), token),
            b"HTTP/1.1 204 No Content\r\nX-T: %b\r\n\r\n" % token,
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nX-T: %b\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (token, len(token), token),
            b"NOT HTTP %b\r\n\r\n" % token,
            b"HTTP/1.1 304 Not Modified\r\nX-T: %b\r\n\r\n" % token,
        ][kind % 6]
        answers[target] = answer + STRAY[kind % 3]
    return Plan(wire, answers)


def h11_requests(wire: bytes) -> list[tuple[str, str, str]]:
    """The requests h11 frames from the client's bytes, up to its first error; upgrades
    are refused, as the scripted instance refuses them."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    out: list[tuple[str, str, str]] = []
    cur: list[str] = []
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                cur = [ev.method.decode(), ev.target.decode(), ""]
            elif isinstance(ev, h11.Data):
                cur[2] += bytes(ev.data).decode("latin-1")
            elif isinstance(ev, h11.EndOfMessage):
                out.append((cur[0], cur[1], cur[2]))
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out
                conn.start_next_cycle()
            elif ev is h11.PAUSED:
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            else:
                return out
    except h11.ProtocolError:
        return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scripted")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxy(root: Path) -> AsyncIterator[Running]:
    server = {
        "header_timeout": "1s",
        "body_timeout": "1s",
        "keepalive_timeout": "1s",
        "upstream_header_timeout": "2s",
    }
    async with scripted(root, server=server) as p:
        yield p


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(data)
        writer.write_eof()
        async with asyncio.timeout(6):
            while chunk := await reader.read(65536):
                got += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return got


@settings(
    max_examples=int(os.environ.get("FORKPROXY_FUZZ_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans())
async def test_instance_gets_what_the_client_framed_and_each_answer_is_its_own(
    proxy: Running, root: Path, plan: tuple[list[tuple[str, str, bytes, list[bytes]]], list[int]]
) -> None:
    n = next(_ids)
    p = build(n, *plan)
    s = Scripted(root)
    for target, answer in p.answers.items():
        s.script(target.removeprefix("/s/"), answer)
    got = await _send(proxy.proxy.listen_port, p.wire)
    await asyncio.sleep(0.05)  # the instance appends its record after it answers
    framed = h11_requests(p.wire)
    seen = [
        (r["method"], r["target"], r["body"])
        for r in s.requests()
        if f"e{n}r" in r.get("target", "") or "smuggled" in r.get("target", "")
    ]
    assert seen == framed[: len(seen)], (p.wire, seen, framed)
    assert b"SMUGGLED" not in got, got
    methods = [m for m, _, _, _ in plan[0]]
    judged = judge(got, methods)
    assert judged.error is None, (p.wire, got, judged.error)
    for i, a in enumerate(judged.answers):
        token = f"R{i}e{n}".encode()
        mine = token in a.body or a.header(b"x-t") == token
        others = any(
            f"R{j}e{n}".encode() in a.body + (a.header(b"x-t") or b"") for j in range(4) if j != i
        )
        assert not others, (p.wire, got)
        proxy_error = a.status >= 400 and (
            a.body.startswith(PROXY_ERRORS) or (methods[i] == "HEAD" and not a.body)
        )
        assert mine or proxy_error, (i, a, p.wire, got)
    event(f"forwarded {len(seen)} of {len(framed)}, answers {len(judged.answers)}")
