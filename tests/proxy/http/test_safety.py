"""The proxy refuses to run on a pure-Python HTTP parser."""

from __future__ import annotations

import pytest

from forkproxy.proxy.http.safety import UnsafeParser, check_parsers


def test_compiled_parsers_pass() -> None:
    check_parsers()


def test_pure_python_aiohttp_parser_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    with pytest.raises(UnsafeParser, match="pure-Python"):
        check_parsers()
    monkeypatch.delenv("AIOHTTP_NO_EXTENSIONS")
    from aiohttp import http_parser

    monkeypatch.setattr(http_parser, "HttpRequestParser", http_parser.HttpRequestParserPy)
    with pytest.raises(UnsafeParser, match="C HTTP parser"):
        check_parsers()
