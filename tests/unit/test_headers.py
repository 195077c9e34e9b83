"""Hop-by-hop stripping and forwarding headers."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.headers import downstream_response_headers, server_timing, upstream_request_headers


def test_hop_by_hop_and_connection_named_headers_are_stripped() -> None:
    h = CIMultiDict(
        [
            ("Host", "example.com"),
            ("Connection", "keep-alive, X-Secret, X-Forwarded-For"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret", "1"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("Proxy-Authorization", "Basic x"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Accept", "text/html"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
        ]
    )
    out = upstream_request_headers(h, peer="127.0.0.1", scheme="http", host="example.com")
    names = {k.lower() for k in out}
    for gone in (
        "connection",
        "keep-alive",
        "x-secret",
        "te",
        "transfer-encoding",
        "content-length",
        "proxy-authorization",
    ):
        assert gone not in names
    assert out["X-Forwarded-For"] == "127.0.0.1"  # client value replaced, not dropped
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "example.com"
    assert out["Host"] == "example.com"
    assert out.getall("Cookie") == ["a=1", "b=2"]


def test_response_headers_are_reframed() -> None:
    h = CIMultiDict(
        [
            ("Content-Length", "10"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "close, X-Internal"),
            ("X-Internal", "1"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ]
    )
    out = downstream_response_headers(h)
    assert set(out.keys()) == {"Set-Cookie"}
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]


def test_server_timing() -> None:
    assert server_timing(0.0, False, 0.002) == "queue;dur=0.0, upstream;dur=2.0"
    assert "cold;dur=5.0" in server_timing(0.005, True, 0.001)
