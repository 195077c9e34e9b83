"""Startup checks that the HTTP parsers are the compiled, strict ones. The data path
parses with llhttp through httptools (C only); aiohttp (admin listener, websockets in
tests) must not fall back to its pure-Python parser, where its smuggling CVEs lived."""

from __future__ import annotations

import os

import aiohttp
import httptools
from aiohttp import http_parser


class UnsafeParser(RuntimeError):
    pass


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def check_parsers() -> None:
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        raise UnsafeParser("AIOHTTP_NO_EXTENSIONS is set: refusing aiohttp's pure-Python parser")
    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    if c_parser is None or http_parser.HttpRequestParser is not c_parser:
        raise UnsafeParser("aiohttp's C HTTP parser is not in use (pure-Python fallback)")
    if _version(aiohttp.__version__) < (3, 14, 4):
        raise UnsafeParser(f"aiohttp {aiohttp.__version__} < 3.14.4 (parser fixes)")
    parser_mod = httptools.HttpRequestParser.__module__
    if not getattr(httptools.parser.parser, "__file__", "").endswith((".so", ".pyd")):
        raise UnsafeParser(f"httptools parser {parser_mod} is not the compiled llhttp binding")
