"""Request smuggling and malformed heads on a raw socket: every ambiguous framing is a
400 and a closed connection, nothing after it reaches the instance, and the body the
proxy sends upstream is always re-framed by the proxy (never both CL and TE)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.conftest import Running
from tests.proxy.hardening.conftest import exchange, recorder, seen

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


def post(headers: bytes, body: bytes, version: bytes = b"1.1") -> bytes:
    return b"POST /h HTTP/" + version + b"\r\nHost: t\r\n" + headers + b"\r\n" + body


BAD = {
    # both framings, either order
    "cl-te": post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
    "te-cl": post(b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", b"0\r\n\r\n" + SMUGGLED),
    # duplicate / conflicting / malformed Content-Length
    "cl-dup-same": post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
    "cl-conflict": post(b"Content-Length: 3\r\nContent-Length: 40\r\n", b"abc" + SMUGGLED),
    "cl-list": post(b"Content-Length: 3, 3\r\n", b"abc"),
    "cl-plus": post(b"Content-Length: +3\r\n", b"abc"),
    "cl-negative": post(b"Content-Length: -1\r\n", b"abc"),
    "cl-hex": post(b"Content-Length: 0x3\r\n", b"abc"),
    "cl-empty": post(b"Content-Length: \r\n", b""),
    "cl-overflow": post(b"Content-Length: 99999999999999999999999\r\n", b"abc"),
    # obfuscated / unknown Transfer-Encoding
    "te-identity": post(b"Transfer-Encoding: identity\r\n", b"abc"),
    "te-xchunked": post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    "te-gzip-chunked": post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    "te-chunked-gzip": post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
    "te-twice": post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    "te-chunked-twice": post(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"
    ),
    "te-space-before-colon": post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "te-vtab": post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"),
    "te-http10": post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"1.0"),
    # obs-fold continuation lines
    "obs-fold": b"GET /h HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold-te": post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    # bare LF / bare CR line endings
    "bare-lf": b"GET /h HTTP/1.1\nHost: t\n\n",
    "bare-lf-header": b"GET /h HTTP/1.1\r\nHost: t\nX: y\r\n\r\n",
    "bare-cr": b"GET /h HTTP/1.1\rHost: t\r\n\r\n",
    # invalid chunk sizes and extensions
    "chunk-size-garbage": post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-negative": post(b"Transfer-Encoding: chunked\r\n", b"-1\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-0x": post(b"Transfer-Encoding: chunked\r\n", b"0x3\r\nabc\r\n0\r\n\r\n"),
    "chunk-size-overflow": post(
        b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"
    ),
    "chunk-size-space": post(b"Transfer-Encoding: chunked\r\n", b"3 \r\nabc\r\n0\r\n\r\n"),
    "chunk-ext-nul": post(b"Transfer-Encoding: chunked\r\n", b"3;a\x00b\r\nabc\r\n0\r\n\r\n"),
    "chunk-ext-bare-lf": post(b"Transfer-Encoding: chunked\r\n", b"3;a\nabc\r\n0\r\n\r\n"),
    "chunk-data-overrun": post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcXX0\r\n\r\n"),
    "chunk-bare-lf": post(b"Transfer-Encoding: chunked\r\n", b"3\nabc\n0\n\n"),
    # header and request-line syntax
    "header-space-before-colon": b"GET /h HTTP/1.1\r\nHost : t\r\n\r\n",
    "header-nul": b"GET /h HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    "header-ctl": b"GET /h HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n",
    "header-empty-name": b"GET /h HTTP/1.1\r\nHost: t\r\n: x\r\n\r\n",
    "url-space": b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
    "url-ctl": b"GET /a\x7fb HTTP/1.1\r\nHost: t\r\n\r\n",
    "url-8bit": b"GET /a\xffb HTTP/1.1\r\nHost: t\r\n\r\n",
    "method-lowercase": b"get /h HTTP/1.1\r\nHost: t\r\n\r\n",
    "method-unknown": b"FOO /h HTTP/1.1\r\nHost: t\r\n\r\n",
    "version-1.2": b"GET /h HTTP/1.2\r\nHost: t\r\n\r\n",
    "version-2.0": b"GET /h HTTP/2.0\r\nHost: t\r\n\r\n",
    "version-0.9": b"GET /h\r\n\r\n",
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "asterisk-get": b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
    "absolute-bad-scheme": b"GET ftp://x/y HTTP/1.1\r\nHost: t\r\n\r\n",
    "absolute-no-authority": b"GET http:///y HTTP/1.1\r\nHost: t\r\n\r\n",
    # Host rules
    "host-missing": b"GET /h HTTP/1.1\r\n\r\n",
    "host-duplicate": b"GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "host-duplicate-http10": b"GET /h HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "host-empty-and-other": b"GET /h HTTP/1.1\r\nHost:\r\nHost: b\r\n\r\n",
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxy() -> AsyncIterator[Running]:
    async with recorder(pool={"max_instances": 1}) as p:
        yield p


async def _history(p: Running) -> list[list[object]]:
    async with p.session.get(p.url + "/__seen") as r:
        assert r.status == 200
        return list(await r.json())


@pytest.mark.parametrize("name", sorted(BAD))
async def test_ambiguous_or_malformed_request_is_400_and_closes(proxy: Running, name: str) -> None:
    before = await _history(proxy)
    # a well-formed request pipelined after the bad one must never be served either
    ex = await exchange(proxy.proxy.listen_port, BAD[name] + SMUGGLED, timeout=5)
    assert ex.closed, f"connection left open: {ex.data!r}"
    (resp,) = ex.responses
    assert resp.status == 400, resp
    assert resp.header(b"Connection") == b"close"
    after = await _history(proxy)
    # nothing of the bad request (nor what followed it) reached the instance
    assert after[len(before) :] == [], after[len(before) :]


async def test_valid_chunked_body_is_reframed_upstream(proxy: Running) -> None:
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    ex = await exchange(
        proxy.proxy.listen_port,
        post(b"Transfer-Encoding: chunked\r\nConnection: close\r\n", body),
    )
    (resp,) = ex.responses
    got = seen(resp)
    assert resp.status == 200 and got["body_len"] == 11
    assert got["h"]["transfer-encoding"] == ["chunked"]
    assert "content-length" not in got["h"]
    assert "x-trailer" not in got["h"]  # trailers are dropped, not turned into headers


async def test_content_length_body_keeps_one_content_length(proxy: Running) -> None:
    ex = await exchange(
        proxy.proxy.listen_port, post(b"Content-Length: 3\r\nConnection: close\r\n", b"abc")
    )
    got = seen(ex.responses[0])
    assert got["h"]["content-length"] == ["3"] and "transfer-encoding" not in got["h"]
    assert got["body_len"] == 3


async def test_pipelined_requests_after_a_good_one_are_served_in_order(proxy: Running) -> None:
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(3)) + post(
        b"Content-Length: 2\r\nConnection: close\r\n", b"xy"
    )
    ex = await exchange(proxy.proxy.listen_port, reqs)
    targets = [seen(r)["target"] for r in ex.responses]
    assert targets == ["/p0", "/p1", "/p2", "/h"] and ex.closed


async def test_bad_request_pipelined_behind_a_good_one(proxy: Running) -> None:
    good = b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
    ex = await exchange(proxy.proxy.listen_port, good + BAD["cl-te"])
    assert ex.closed
    assert ex.statuses == [200, 400]
    assert seen(ex.responses[0])["target"] == "/first"
