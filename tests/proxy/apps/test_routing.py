"""The router: Host and path in, app name out."""

from __future__ import annotations

import pytest

from forkproxy.proxy.routing import Route, Router, host_name

ROUTES = [
    Route("shop", ("shop.example.com", "www.shop.example.com")),
    Route("api", ("shop.example.com",), "/api"),
    Route("apiv2", ("shop.example.com",), "/api/v2/"),
    Route("tenants", ("*.tenants.example.com",)),
    Route("deep", ("*.eu.tenants.example.com",)),
    Route("blog", ("blog.example.com",), "/blog"),
]


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"Shop.Example.COM:8080", "shop.example.com"),
        ("shop.example.com.", "shop.example.com"),
        (b"[::1]:80", "::1"),
        (None, ""),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_host_name(raw: bytes | str | None, name: str) -> None:
    assert host_name(raw) == name


@pytest.mark.parametrize(
    ("host", "path", "app"),
    [
        (b"shop.example.com", b"/", "shop"),
        (b"SHOP.example.com:443", b"/cart?x=1", "shop"),
        (b"www.shop.example.com", b"/", "shop"),
        (b"shop.example.com", b"/api", "api"),
        (b"shop.example.com", b"/api/x?y", "api"),
        (b"shop.example.com", b"/apix", "shop"),  # a prefix ends on a segment boundary
        (b"shop.example.com", b"/api/v2/items", "apiv2"),  # longest prefix first
        (b"a.tenants.example.com", b"/", "tenants"),
        (b"a.b.tenants.example.com", b"/", "tenants"),
        (b"x.eu.tenants.example.com", b"/", "deep"),  # longest suffix first
        (b"tenants.example.com", b"/", None),  # *.suffix: subdomains only
        (b"other.example.com", b"/", None),
        (None, b"/", None),
        (b"blog.example.com", b"/other", None),  # no prefix of its host matches
    ],
)
def test_match(host: bytes | None, path: bytes, app: str | None) -> None:
    assert Router(ROUTES).match(host, path) == app


def test_unknown_goes_to_default_app() -> None:
    r = Router(ROUTES, default="shop")
    assert r.match(b"nowhere.test", b"/") == "shop"
    assert r.match(b"blog.example.com", b"/other") == "shop"
    assert r.match(b"blog.example.com", b"/blog/post") == "blog"


def test_catch_all_is_least_specific() -> None:
    r = Router([Route("all", ("*",)), Route("one", ("one.test",)), Route("w", ("*.w.test",))])
    assert r.match(b"one.test", b"/") == "one"
    assert r.match(b"x.w.test", b"/") == "w"
    assert r.match(b"else.test", b"/") == "all"
    assert r.match(None, b"/") == "all"


def test_a_level_without_a_matching_prefix_falls_through() -> None:
    r = Router([Route("all", ("*",)), Route("api", ("a.test",), "/api")])
    assert r.match(b"a.test", b"/api/1") == "api"
    assert r.match(b"a.test", b"/") == "all"
