"""Hop-by-hop stripping and forwarding headers, on raw header bytes."""

from __future__ import annotations

from forkproxy.proxy.http.headers import (
    DEFAULT_RULES,
    DROP_CLIENT_HEADERS,
    HeaderRules,
    downstream_raw,
    server_timing,
    upstream_head,
)


def _parse(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    assert head.endswith(b"\r\n\r\n")
    out = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b": ")
            out.append((name.lower(), value))
    return lines[0], out


RAW = [
    (b"Host", b"example.com"),
    (b"Connection", b"keep-alive, X-Secret, X-Forwarded-For"),
    (b"Keep-Alive", b"timeout=5"),
    (b"X-Secret", b"1"),
    (b"TE", b"trailers"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Content-Length", b"5"),
    (b"Proxy-Authorization", b"Basic x"),
    (b"Expect", b"100-continue"),
    (b"X-Forwarded-For", b"6.6.6.6"),
    (b"X-Forwarded-Proto", b"https"),
    (b"Forwarded", b"for=6.6.6.6"),
    (b"Cookie", b"a=1"),
    (b"Cookie", b"b=2"),
]


def test_hop_by_hop_and_connection_named_headers_are_stripped() -> None:
    head = upstream_head(
        "POST",
        b"/a/../b?x=%2F",
        RAW,
        peer="127.0.0.1",
        host=b"example.com",
        framing=b"Content-Length: 5\r\n",
    )
    line, hdrs = _parse(head)
    assert line == b"POST /a/../b?x=%2F HTTP/1.1"
    names = [n for n, _ in hdrs]
    for gone in (
        b"connection",
        b"keep-alive",
        b"x-secret",
        b"te",
        b"expect",
        b"transfer-encoding",
    ):
        assert gone not in names
    d = dict(hdrs)
    assert d[b"proxy-authorization"] == b"Basic x"  # for the app: forkproxy authenticates nobody
    assert d[b"x-forwarded-for"] == b"127.0.0.1"  # client value replaced, not dropped
    assert d[b"x-forwarded-proto"] == b"http"
    assert d[b"x-forwarded-host"] == b"example.com"
    assert d[b"forwarded"] == b"for=127.0.0.1;proto=http"
    assert d[b"host"] == b"example.com"
    assert names.count(b"content-length") == 1 and d[b"content-length"] == b"5"
    assert [v for n, v in hdrs if n == b"cookie"] == [b"a=1", b"b=2"]


def test_trusted_proxy_values_are_extended() -> None:
    head = upstream_head(
        "GET", b"/", RAW, peer="10.0.0.2", trusted=True, host=b"example.com", framing=b""
    )
    d = dict(_parse(head)[1])
    assert d[b"x-forwarded-for"] == b"6.6.6.6, 10.0.0.2"
    assert d[b"x-forwarded-proto"] == b"https"
    assert d[b"forwarded"] == b"for=6.6.6.6, for=10.0.0.2"


CLIENT_ADDRESS = [(n.title().encode(), b"6.6.6.6") for n in DROP_CLIENT_HEADERS]
UNDERSCORED = [(b"X_Forwarded_For", b"6.6.6.6"), (b"Content_Length", b"5"), (b"x_a", b"1")]


def _head(
    raw: list[tuple[bytes, bytes]],
    *,
    peer: str,
    trusted: bool = False,
    rules: HeaderRules = DEFAULT_RULES,
) -> list[tuple[bytes, bytes]]:
    head = upstream_head(
        "GET",
        b"/",
        [(b"Host", b"h"), *raw],
        peer=peer,
        trusted=trusted,
        host=b"h",
        framing=b"",
        rules=rules,
    )
    return _parse(head)[1]


def test_client_address_headers_are_dropped_from_an_untrusted_peer() -> None:
    hdrs = _head([*CLIENT_ADDRESS, (b"X-Keep", b"1")], peer="10.1.2.3")
    assert [v for _, v in hdrs if v == b"6.6.6.6"] == []
    assert [v for n, v in hdrs if n == b"x-real-ip"] == [b"10.1.2.3"]  # the peer, once
    assert (b"x-keep", b"1") in hdrs


def test_a_trusted_proxy_keeps_its_client_address_headers() -> None:
    hdrs = _head(CLIENT_ADDRESS, peer="10.1.2.3", trusted=True)
    kept = {n for n, v in hdrs if v == b"6.6.6.6"}
    assert kept == {n.encode() for n in DROP_CLIENT_HEADERS}
    assert [v for n, v in hdrs if n == b"x-real-ip"] == [b"6.6.6.6"]  # theirs, not a second


def test_underscored_names_are_dropped_from_every_peer_unless_allowed() -> None:
    for trusted in (False, True):
        names = [n for n, _ in _head(UNDERSCORED, peer="10.1.2.3", trusted=trusted)]
        assert not [n for n in names if b"_" in n], names
    allow = HeaderRules.build(DROP_CLIENT_HEADERS, underscores=True)
    names = [n for n, _ in _head(UNDERSCORED, peer="10.1.2.3", rules=allow)]
    assert {b"x_forwarded_for", b"content_length", b"x_a"} <= set(names)


def test_drop_list_is_configurable_and_x_real_ip_is_always_ours() -> None:
    rules = HeaderRules.build(["X-Custom-Client"], underscores=False)
    raw = [(b"X-Custom-Client", b"6.6.6.6"), (b"X-Real-IP", b"6.6.6.6"), (b"True-Client-IP", b"7")]
    hdrs = _head(raw, peer="10.1.2.3", rules=rules)
    assert b"x-custom-client" not in dict(hdrs)
    assert dict(hdrs)[b"true-client-ip"] == b"7"  # not in this list: kept
    assert [v for n, v in hdrs if n == b"x-real-ip"] == [b"10.1.2.3"]


def test_websocket_head_keeps_the_upgrade() -> None:
    raw = [
        (b"Host", b"h"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Key", b"k"),
    ]
    d = dict(
        _parse(
            upstream_head("GET", b"/ws", raw, peer="::1", host=b"h", framing=b"", websocket=True)
        )[1]
    )
    assert d[b"connection"] == b"Upgrade" and d[b"upgrade"] == b"websocket"
    assert d[b"sec-websocket-key"] == b"k"
    assert d[b"forwarded"] == b'for="[::1]";proto=http'


def test_response_headers_are_reframed() -> None:
    raw = [
        (b"Content-Length", b"10"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert downstream_raw(raw) == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_server_timing() -> None:
    assert server_timing(0.0, False, 0.002) == "queue;dur=0.0, upstream;dur=2.0"
    assert "cold;dur=5.0" in server_timing(0.005, True, 0.001)
    # an instance's first answer is named as such: its lazy set-up is not the cold start's
    first = server_timing(0.005, True, 0.08, first=True)
    assert 'upstream;dur=80.0;desc="first request of a fresh instance"' in first
