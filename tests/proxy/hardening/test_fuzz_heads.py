"""Property test: mutated request heads (byte flips, inserted CR/LF/SP/NUL/TAB, duplicated
headers, Content-Length / Transfer-Encoding variants) from a corpus of valid ones, thrown
at the proxy on a raw socket. Whatever the bytes: no 5xx (a 502 would mean the proxy
forwarded something the instance could not parse), the connection always ends within a
deadline, and every request the instance saw has the body length llhttp framed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Running
from tests.proxy.hardening.conftest import parse_responses, recorder

pytestmark = pytest.mark.asyncio(loop_scope="module")

CORPUS = [
    b"GET /h?q=1 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /h HTTP/1.0\r\nHost: t\r\n\r\n",
    b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /h/x HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    b"DELETE /h HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
    b"GET http://t/h HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /h HTTP/1.1\r\nHost: t\r\n\r\nGET /h2 HTTP/1.1\r\nHost: t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
]
INSERTS = [b"\r", b"\n", b" ", b"\x00", b"\t", b"\r\n", b":", b",", b"\r\n\r\n", b"0", b"-"]
FRAMING = [
    b"Content-Length: 3\r\n",
    b"Content-Length: 30\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length:3\r\n",
    b"Content-Length: 3 \r\n",
    b"Content-Length: 3,3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: Chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding:  chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding\t: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Host: other\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    # framing lines and duplicates keep many requests valid enough to be forwarded
    kinds = ["flip", "insert", "delete", "dup", "dup", "framing", "framing", "framing"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(INSERTS))
        elif kind == "delete":
            del data[at]
        else:
            lines = bytes(data).split(b"\r\n")
            if len(lines) < 3:
                continue
            i = draw(st.integers(1, len(lines) - 2))
            line = lines[i] + b"\r\n" if kind == "dup" else draw(st.sampled_from(FRAMING))
            lines.insert(i, line.removesuffix(b"\r\n"))
            data = bytearray(b"\r\n".join(lines))
        if not data:
            data = bytearray(b"\r\n")
    return bytes(data)


@dataclass
class Msg:
    method: str = ""
    body: int = 0


@dataclass
class _Framer:
    """How llhttp frames the bytes, request by request, up to the first error."""

    msgs: list[Msg] = field(default_factory=list)
    parser: httptools.HttpRequestParser | None = None

    def on_message_begin(self) -> None:
        self.msgs.append(Msg())

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.msgs[-1].method = self.parser.get_method().decode()

    def on_body(self, body: bytes) -> None:
        self.msgs[-1].body += len(body)


def llhttp_framing(data: bytes) -> list[Msg]:
    f = _Framer()
    f.parser = httptools.HttpRequestParser(f)
    with contextlib.suppress(httptools.HttpParserError):
        f.parser.feed_data(data)
    return f.msgs


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxy() -> AsyncIterator[Running]:
    limits = {"header_timeout": "1s", "body_timeout": "1s", "keepalive_timeout": "1s"}
    async with recorder(server=limits, pool={"max_instances": 1}) as p:
        yield p


async def _throw(port: int, data: bytes) -> tuple[bytes, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(data)
        writer.write_eof()  # half-close: the proxy must finish and close, whatever it got
        async with asyncio.timeout(4):
            while chunk := await reader.read(65536):
                got += chunk
        return got, True
    except TimeoutError:
        return got, False
    except ConnectionError:
        return got, True
    finally:
        writer.close()


@settings(
    max_examples=int(os.environ.get("FORKPROXY_FUZZ_EXAMPLES", "200")),
    deadline=None,  # each example has its own 4 s connection deadline
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=mutated())
async def test_mutated_heads_never_5xx_never_hang_never_reframed(
    proxy: Running, data: bytes
) -> None:
    got, closed = await _throw(proxy.proxy.listen_port, data)
    assert closed, f"connection still open after 4 s: sent {data!r}, got {got!r}"
    responses = parse_responses(got)
    for resp in responses:
        assert resp.status < 500, f"{resp.status} for {data!r}: {resp.body!r}"
    framed = llhttp_framing(data)
    app = [r for r in responses if r.header(b"Content-Type") == b"application/json; charset=utf-8"]
    answered = sorted({r.status for r in responses} - {200})
    event(f"forwarded {min(len(app), 2)}, proxy answered {answered}")
    assert len(app) <= len(framed), (data, got)
    for resp, msg in zip(app, framed, strict=False):
        seen = json.loads(resp.body)
        names = [n.lower() for n, _ in seen["headers"]]
        assert not ("content-length" in names and "transfer-encoding" in names), seen
        assert seen["method"] == msg.method, (data, seen)
        assert seen["body_len"] == msg.body, (data, seen, msg)
