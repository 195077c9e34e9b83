"""The response reader alone: bytes in, events out, no socket (issue 23)."""

from __future__ import annotations

from forkproxy.proxy.http.response_reader import (
    END,
    HEAD,
    STRAY,
    Broken,
    Info,
    ResponseReader,
    Trailing,
)


def read(data: bytes, *, head_only: bool = False, upgrade: bool = False) -> list[object]:
    reader = ResponseReader()
    reader.start(head_only, upgrade)
    return list(reader.feed(data))


def test_a_response_is_its_head_its_body_and_its_end() -> None:
    reader = ResponseReader()
    reader.start(False, False)
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert events == [HEAD, b"ok", END]
    assert (reader.status, reader.reason, reader.keep_alive) == (200, b"OK", True)
    assert not reader.no_reuse


def test_a_byte_after_a_head_answer_is_stray() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    assert read(wire, head_only=True) == [HEAD, END, STRAY]


def test_early_hints_are_passed_on_and_a_1xx_with_framing_is_refused() -> None:
    events = read(b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 204 No\r\n\r\n")
    info = events[0]
    assert isinstance(info, Info) and info.status == 103 and info.headers == [(b"Link", b"</s>")]
    assert events[1:] == [HEAD, END]
    broken = read(b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nabc")[-1]
    assert isinstance(broken, Broken) and "framing" in str(broken.error)


def test_a_101_to_an_upgrade_hands_over_what_follows() -> None:
    head = b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    events = read(head + b"\x81\x00", upgrade=True)
    assert events[0] is HEAD
    assert isinstance(events[1], Trailing) and events[1].data == b"\x81\x00"
    refused = read(head)[-1]  # a 101 to a request that asked for none
    assert isinstance(refused, Broken)


def test_a_reused_reader_starts_each_response_afresh() -> None:
    reader = ResponseReader()
    reader.start(True, False)
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n") == [HEAD, END]
    assert reader.no_reuse  # a HEAD answer's end is known only by rule
    reader.start(False, False)
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx") == [HEAD, b"x", END]
    assert not reader.no_reuse
