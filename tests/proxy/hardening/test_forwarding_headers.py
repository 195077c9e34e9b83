"""What the instance receives, checked on a raw socket: hop-by-hop headers removed (and
every header the client's Connection names), the forwarding set replaced unless the peer
is a trusted proxy, Expect answered by the proxy, Host and absolute-form targets, the
path byte for byte, nothing added and nothing decompressed."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.conftest import Running
from tests.proxy.hardening.conftest import exchange, parse_responses, recorder, seen

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxy() -> AsyncIterator[Running]:
    async with recorder() as p:
        yield p


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def trusting() -> AsyncIterator[Running]:
    async with recorder(server={"trusted_proxies": ["127.0.0.0/8", "::1"]}) as p:
        yield p


async def one(p: Running, head: bytes, body: bytes = b"") -> dict[str, object]:
    ex = await exchange(p.proxy.listen_port, head + b"Connection: close\r\n\r\n" + body)
    (resp,) = ex.responses
    assert resp.status == 200, resp
    return seen(resp)


async def test_hop_by_hop_and_connection_named_headers_are_removed(proxy: Running) -> None:
    got = await one(
        proxy,
        b"GET /h HTTP/1.1\r\nHost: t\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic c2VjcmV0\r\n"
        b"Upgrade: h2c\r\nConnection: X-Drop, x-forwarded-for, Host\r\nConnection: x-other\r\n"
        b"X-Drop: 1\r\nX-Other: 2\r\nX-Keep: 3\r\nX-Forwarded-For: 6.6.6.6\r\n",
    )
    names = got["names"]
    for hop in (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-drop",
        "x-other",
        "expect",
    ):
        assert hop not in names, (hop, names)
    h = got["h"]
    assert h["x-keep"] == ["3"]
    assert h["proxy-authorization"] == ["Basic c2VjcmV0"]  # for the app, as nginx/HAProxy do
    # named in Connection, but the proxy's own forwarding set and Host survive
    assert h["x-forwarded-for"] == ["127.0.0.1"] and h["host"] == ["t"]


async def test_forwarding_set_is_replaced_for_an_untrusted_peer(proxy: Running) -> None:
    got = await one(
        proxy,
        b"GET /h HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"X-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
        b"Forwarded: for=6.6.6.6;proto=https\r\n",
    )
    h = got["h"]
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["app.example"]
    assert h["forwarded"] == ["for=127.0.0.1;proto=http"]


async def test_trusted_proxy_chain_is_appended(trusting: Running) -> None:
    got = await one(
        trusting,
        b"GET /h HTTP/1.1\r\nHost: inner\r\nX-Forwarded-For: 6.6.6.6, 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example\r\n"
        b"Forwarded: for=6.6.6.6;proto=https\r\n",
    )
    h = got["h"]
    assert h["x-forwarded-for"] == ["6.6.6.6, 10.0.0.1, 127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-forwarded-host"] == ["app.example"]
    assert h["forwarded"] == ["for=6.6.6.6;proto=https, for=127.0.0.1"]


async def test_trusted_proxy_without_forwarding_headers_gets_the_defaults(
    trusting: Running,
) -> None:
    h = (await one(trusting, b"GET /h HTTP/1.1\r\nHost: t\r\n"))["h"]
    assert h["x-forwarded-for"] == ["127.0.0.1"] and h["x-forwarded-proto"] == ["http"]
    assert h["x-forwarded-host"] == ["t"]


async def test_expect_100_continue_is_answered_by_the_proxy_once(proxy: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy.listen_port)
    try:
        writer.write(
            b"POST /h HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        async with asyncio.timeout(5):
            rest = await reader.read(-1)
    finally:
        writer.close()
    (final,) = parse_responses(rest)  # no second 100 Continue from the instance
    got = seen(final)
    assert final.status == 200 and got["body_len"] == 5
    assert "expect" not in got["names"]


async def test_unknown_expectation_is_417(proxy: Running) -> None:
    ex = await exchange(
        proxy.proxy.listen_port, b"POST /h HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n"
    )
    assert ex.statuses == [417] and ex.closed


async def test_absolute_form_target_uses_its_authority(proxy: Running) -> None:
    got = await one(proxy, b"GET http://app.example:8080/h/x?q=1 HTTP/1.1\r\nHost: other\r\n")
    assert got["target"] == "/h/x?q=1"
    assert got["h"]["host"] == ["app.example:8080"]
    assert got["h"]["x-forwarded-host"] == ["app.example:8080"]
    got = await one(proxy, b"GET http://app.example?q=1 HTTP/1.1\r\nHost: other\r\n")
    assert got["target"] == "/?q=1" and got["h"]["host"] == ["app.example"]


async def test_http10_without_host_is_forwarded(proxy: Running) -> None:
    ex = await exchange(proxy.proxy.listen_port, b"GET /h HTTP/1.0\r\n\r\n")
    (resp,) = ex.responses
    assert resp.status == 200 and ex.closed


async def test_path_is_forwarded_byte_for_byte(proxy: Running) -> None:
    for raw in ("/a/../b/%2e%2e/x%2Fy", "/h/a/../b/%2e%2e/x%2Fy?q=%20&r=a+b&&s", "//double//"):
        got = await one(proxy, f"GET {raw} HTTP/1.1\r\nHost: t\r\n".encode())
        assert got["target"] == raw


async def test_no_headers_added_and_bodies_never_decompressed(proxy: Running) -> None:
    body = gzip.compress(b"x" * 10000)
    got = await one(
        proxy,
        b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n"
        % len(body),
        body,
    )
    assert got["body_len"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    added = set(got["names"]) - {
        "host",
        "content-encoding",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    }
    assert not added, added  # no User-Agent, Accept(-Encoding), Content-Type of our own


async def test_h2c_upgrade_request_is_served_as_http11(proxy: Running) -> None:
    ex = await exchange(
        proxy.proxy.listen_port,
        b"GET /h HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        b"GET /second HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    first, second = ex.responses
    assert first.status == 200 and second.status == 200
    got = seen(first)
    assert not {"upgrade", "http2-settings", "connection"} & set(got["names"])
    assert seen(second)["target"] == "/second"


MARK = b"ECHO-ME-" + b"7f3a9c"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + MARK + b" HTTP/1.1\r\nHost: t\r\nContent-Length: x" + MARK + b"\r\n\r\n",
        b"GET /" + MARK + b"/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /" + MARK + b" HTTP/1.1\r\nHost: t\r\nX-" + MARK + b": " + b"v" * 40000 + b"\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: " + MARK + b"\r\nHost: " + MARK + b"\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: " + MARK + b"\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: t\r\nExpect: " + MARK + b"\r\n\r\n",
    ],
)
async def test_error_responses_never_echo_the_request(proxy: Running, request_bytes: bytes) -> None:
    ex = await exchange(proxy.proxy.listen_port, request_bytes)
    (resp,) = ex.responses
    assert 400 <= resp.status < 500
    assert MARK.lower() not in ex.data.lower()
    assert len(resp.body) < 100


async def test_client_address_headers_follow_the_config() -> None:
    # the configured list replaces the default one; X-Real-IP stays the proxy's own
    server = {"drop_client_headers": ["X-Mine"], "underscores_in_headers": True}
    async with recorder(server=server) as p:
        h = (
            await one(
                p,
                b"GET /h HTTP/1.1\r\nHost: t\r\nX-Mine: 6\r\nTrue-Client-IP: 7\r\n"
                b"X-Real-IP: 8\r\nX_Under: 9\r\n",
            )
        )["h"]
    assert "x-mine" not in h
    assert h["true-client-ip"] == ["7"] and h["x_under"] == ["9"]
    assert h["x-real-ip"] == ["127.0.0.1"]


async def test_client_address_headers_are_dropped_by_default(proxy: Running) -> None:
    h = (
        await one(
            proxy,
            b"GET /h HTTP/1.1\r\nHost: t\r\nTrue-Client-IP: 7\r\nX-Real-IP: 8\r\n"
            b"X-Forwarded-Prefix: /admin\r\nX_Under: 9\r\n",
        )
    )["h"]
    assert not {"true-client-ip", "x-forwarded-prefix", "x_under"} & set(h)
    assert h["x-real-ip"] == ["127.0.0.1"]
