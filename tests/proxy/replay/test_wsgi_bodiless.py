"""forkproxy.backends.process._wsgi.bodiless on its own (pure WSGI plumbing, no server): what the
fork-mode test cannot see from the wire - a start_response made lazily from the first
chunk, the app's iterable always closed, write() kept for the head, bodies kept where
they belong."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from forkproxy.backends.process._wsgi import bodiless


class Body:
    def __init__(self, start: Callable[..., Any], status: str) -> None:
        self.start, self.status, self.closed, self.read = start, status, False, 0

    def __iter__(self) -> Iterator[bytes]:
        self.start(self.status, [("Content-Length", "4")])  # lazily, as PEP 3333 allows
        for chunk in (b"ab", b"cd"):
            self.read += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


def run(method: str, status: str) -> tuple[bytes, Body, list[bytes]]:
    made: list[Body] = []
    written: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Body:
        made.append(Body(start_response, status))
        return made[0]

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return written.append

    out = b"".join(bodiless(app)({"REQUEST_METHOD": method}, start_response))
    return out, made[0], written


@pytest.mark.parametrize(
    ("method", "status", "body"),
    [
        ("GET", "200 OK", b"abcd"),
        ("HEAD", "200 OK", b""),
        ("GET", "204 No Content", b""),
        ("GET", "304 Not Modified", b""),
        ("POST", "103 Early Hints", b""),
    ],
)
def test_lazy_start_response_body_kept_or_dropped_and_closed(
    method: str, status: str, body: bytes
) -> None:
    out, made, _ = run(method, status)
    assert out == body
    assert made.closed and made.read == 2  # run to its end and closed either way


def test_write_callable_sends_the_head_but_no_body_to_head() -> None:
    written: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "5")])(b"hello")
        return []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return written.append

    assert list(bodiless(app)({"REQUEST_METHOD": "HEAD"}, start_response)) == []
    assert written == [b""]
    assert list(bodiless(app)({"REQUEST_METHOD": "GET"}, start_response)) == []
    assert written == [b"", b"hello"]
