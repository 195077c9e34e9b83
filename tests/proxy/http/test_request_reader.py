"""The request reader alone: bytes in, events out, no socket (issue 23)."""

from __future__ import annotations

from forkproxy.proxy.http.request import Limits, Request
from forkproxy.proxy.http.request_reader import END, OVERFLOW, Failed, RequestReader, UpgradeHead
from tests.proxy.http.test_reader_fuzz import _Writer

H2C_BODY = (
    b"POST /u HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)


def reader(limits: Limits | None = None) -> RequestReader:
    writer = _Writer()
    return RequestReader(limits or Limits(), b"p:1", lambda: Request(writer), upgrades=True)


def test_a_request_is_a_head_its_body_and_its_end() -> None:
    events = reader().feed(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    head, data, end = events
    assert isinstance(head, Request) and (head.method, head.path) == ("POST", b"/a")
    assert data == b"abc" and end is END


def test_a_websocket_head_hands_back_what_follows() -> None:
    ws = (
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    r = reader()
    events = r.feed(ws + b"\x81\x00GET / HTTP/1.1\r\n")
    assert isinstance(events[0], Request) and events[0].upgrade
    assert events[1] is END
    assert isinstance(events[2], UpgradeHead) and events[2].rest == b"\x81\x00GET / HTTP/1.1\r\n"
    assert r.feed(b"more") == []  # the connection holds what follows


def test_too_many_pipelined_requests_stop_the_reader() -> None:
    events = reader(Limits(max_pipelined=2)).feed(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 5)
    assert sum(isinstance(e, Request) for e in events) == 3  # one running, two queued
    assert events[-1] is OVERFLOW


def test_a_rule_broken_after_an_h2c_body_keeps_its_status() -> None:
    # the body of an h2c request is read by a second parser fed inside the handling of
    # llhttp's upgrade stop: a 414 in the request after it stays a 414 (it was a plain
    # 400 when the callback's error took the upgrade stop as its context)
    long = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    events = reader().feed(H2C_BODY + long)
    assert [type(e).__name__ for e in events] == ["Request", "bytes", "End", "Failed"]
    failed = events[-1]
    assert isinstance(failed, Failed) and failed.status == 414, failed.text


def test_a_failure_names_the_method_read_so_far() -> None:
    events = reader().feed(b"HEAD /" + b"a" * 9000)
    failed = events[-1]
    assert isinstance(failed, Failed) and (failed.status, failed.method) == (414, "HEAD")


def test_a_chunked_body_past_max_body_is_cut_at_the_limit_and_still_framed() -> None:
    body = b"8\r\n12345678\r\n" * 3 + b"0\r\n\r\n"
    wire = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    wire += b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n"
    for reads in ([wire], [wire[:70], wire[70:]], [wire[i : i + 1] for i in range(len(wire))]):
        r = reader(Limits(max_body=20))
        events = [e for data in reads for e in r.feed(data)]
        data = b"".join(e for e in events if isinstance(e, bytes))
        assert data == b"12345678" * 2 + b"1234"  # exactly max_body bytes, whatever the reads
        kinds = [type(e).__name__ for e in events if not isinstance(e, bytes)]
        assert kinds == ["Request", "TooLarge", "End", "Request", "End"]
