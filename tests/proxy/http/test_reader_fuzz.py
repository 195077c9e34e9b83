"""In-process fuzz of the readers (issue 23): the hardening corpus (valid heads, the
smuggling cases, pipelines, upgrades) mutated byte by byte and fed in random reads,
with no socket. Invariants:

- feeding never raises: whatever the bytes, the reader answers with events, a broken
  request as its own Failed event;
- framing does not depend on read boundaries: the same bytes in other reads give the
  same events (body data joined);
- every request the reader accepts is one h11 frames the same way from the same bytes
  (method, target, body), up to where h11 stops (an error, an upgrade, a close);
- the response reader never raises either, and frames the same in any reads.

A seeded loop, so a CI run is deterministic: FORKPROXY_READER_FUZZ sets the case count
(default 10,000 each, about ten seconds) and FORKPROXY_READER_SEED the seed."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable

import h11
import pytest

from forkproxy.proxy.http.chunks import Budget
from forkproxy.proxy.http.flow import Flow
from forkproxy.proxy.http.headers import upstream_head
from forkproxy.proxy.http.request import Limits, Request
from forkproxy.proxy.http.request_reader import (
    END,
    OVERFLOW,
    TOO_LARGE,
    Event,
    Failed,
    RequestReader,
    UpgradeHead,
)
from forkproxy.proxy.http.response_reader import (
    END as RESP_END,
)
from forkproxy.proxy.http.response_reader import (
    HEAD,
    STRAY,
    Broken,
    Info,
    ResponseReader,
    Trailing,
)
from forkproxy.proxy.http.response_reader import (
    Event as RespEvent,
)
from tests.proxy.hardening.test_fuzz_heads import CORPUS, FRAMING, INSERTS
from tests.proxy.hardening.test_smuggling import BAD, SMUGGLED

CASES = int(os.environ.get("FORKPROXY_READER_FUZZ", "10000"))
SEED = int(os.environ.get("FORKPROXY_READER_SEED", "23"))
# a small max_body, so mutated lengths and chunk sizes pass it
LIMITS = Limits(max_body=64)

WS = (
    b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
H2C_BODY = (
    b"POST /u HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    b"Content-Length: 5\r\n\r\nhello"
)
EXTRA = [
    WS + b"\x81\x05hello",
    H2C_BODY + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"1\r\na\r\n" * 80
    + b"0\r\nX-T: 1\r\n\r\n",
    b"GET /p HTTP/1.1\r\nHost: t\r\n\r\n" * 12,
    b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nExpect: nope\r\n\r\n",
    b"GET /\r\n",
    b"POST /h HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n",
]
VALID = [*CORPUS, *EXTRA]
SEEDS = [*BAD.values(), *(c + SMUGGLED for c in CORPUS)]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nabc",
]


class _Writer:
    """What a Request needs of a connection, and nothing more (no socket)."""

    def __init__(self) -> None:
        self.limits = LIMITS
        self.flow = Flow()
        self.buffered = Budget(0)
        self.peer = "fuzz"
        self.closing = False
        self.draining = False
        self.tunnel: Callable[[bytes], None] | None = None
        self.tunnel_eof: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def take_held(self) -> bytes:
        return b""


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(0, 3)):
        if not data:
            break
        kind = rng.choice(["flip", "insert", "delete", "dup", "framing", "framing"])
        at = rng.randrange(len(data))
        if kind == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            data[at:at] = rng.choice(INSERTS)
        elif kind == "delete":
            del data[at]
        else:
            lines = bytes(data).split(b"\r\n")
            if len(lines) < 3:
                continue
            i = rng.randint(1, len(lines) - 2)
            line = lines[i] if kind == "dup" else rng.choice(FRAMING).removesuffix(b"\r\n")
            lines.insert(i, line)
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


def splits(rng: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    if rng.random() < 0.2:  # byte by byte: every boundary at once
        cuts = list(range(1, len(data)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


Seen = list[tuple[object, ...]]


def read_requests(reads: list[bytes]) -> Seen:
    """The events of `reads`, comparable across splits: body data joined, a request's
    head as its fields, what follows an upgrade head joined to it."""
    writer = _Writer()
    reader = RequestReader(LIMITS, b"proxy:80", lambda: Request(writer), upgrades=True)
    seen: Seen = []
    for data in reads:
        if reader.stopped:
            if seen and seen[-1][0] == "upgrade":
                seen[-1] = ("upgrade", seen[-1][1] + data)
            continue
        for ev in reader.feed(data):
            seen.append(_comparable(ev))
            if seen[-1][0] == "data" and len(seen) > 1 and seen[-2][0] == "data":
                seen[-2:] = [("data", bytes(seen[-2][1]) + bytes(seen[-1][1]))]  # type: ignore[arg-type]
    return seen


def _comparable(ev: Event) -> tuple[object, ...]:
    if isinstance(ev, bytes):
        return ("data", ev)
    if isinstance(ev, Request):
        return (
            "head",
            ev.method,
            ev.path,
            ev.version,
            tuple(ev.headers),
            ev.host,
            ev.content_length,
            ev.chunked,
            ev.keep_alive,
            ev.upgrade,
            ev.expect_continue,
        )
    if ev is END:
        return ("end",)
    if ev is TOO_LARGE:
        return ("too_large",)
    if isinstance(ev, Failed):
        # the status, not its text: a request line without a version is refused as
        # HTTP/0.9 when a read ends with it, else as whatever llhttp finds next (both 400)
        return ("failed", ev.status)
    if isinstance(ev, UpgradeHead):
        return ("upgrade", ev.rest)
    assert ev is OVERFLOW, ev
    return ("overflow",)


def h11_requests(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(method, target, body) of each request h11 frames from `data`, up to an error,
    an upgrade or a request after which the connection must close. Empty lines before
    a request line are skipped (RFC 9112 2.2: a server SHOULD ignore them; llhttp does,
    h11 refuses them)."""
    out: list[tuple[bytes, bytes, bytes]] = []
    while True:
        rest = data.lstrip(b"\r\n")
        if not rest:
            return out
        framed, data, more = _h11_cycles(rest)
        out += framed
        if not more or data == rest:
            return out


def _h11_cycles(data: bytes) -> tuple[list[tuple[bytes, bytes, bytes]], bytes, bool]:
    """The requests h11 frames from `data`, what it left when it stopped, and whether
    it stopped at a request boundary (where an empty line may be what it refused)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[tuple[bytes, bytes, bytes]] = []
    body = b""
    head: h11.Request | None = None
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError:
            left = conn.trailing_data[0]
            return out, left, conn.their_state is h11.IDLE and left[:1] in (b"\r", b"\n")
        if isinstance(ev, h11.Request):
            head, body = ev, b""
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            assert head is not None
            out.append((head.method, head.target, body))
            if conn.our_state is h11.SWITCHED_PROTOCOL or conn.their_state is h11.MUST_CLOSE:
                return out, b"", False
            try:
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return out, b"", False
        else:  # NEED_DATA, PAUSED, ConnectionClosed
            return out, b"", False


Accepted = tuple[Request, bytes]  # a request read whole, and its body


def accepted(reads: list[bytes]) -> list[Accepted]:
    """Each request read whole from `reads`, with its body."""
    writer = _Writer()
    reader = RequestReader(LIMITS, b"proxy:80", lambda: Request(writer), upgrades=True)
    out: list[Accepted] = []
    head: Request | None = None
    body = b""
    for data in reads:
        for ev in reader.feed(data):
            if isinstance(ev, Request):
                head, body = ev, b""
            elif isinstance(ev, bytes):
                body += ev
            elif ev is TOO_LARGE:
                head = None  # answered 413, never forwarded
            elif ev is END and head is not None:
                out.append((head, body))
    return out


def forwarded(req: Request, body: bytes) -> bytes:
    """The request as the data path sends it on (forward.py's framing)."""
    if req.content_length is not None:
        framing, sent = b"Content-Length: %d\r\n" % req.content_length, body
    elif req.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
        sent = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        framing, sent = b"", b""
    head = upstream_head(
        req.method, req.path, req.headers, peer="fuzz", host=req.host, framing=framing
    )
    return head + sent


def check_request_bytes(rng: random.Random, data: bytes, stats: dict[str, int]) -> None:
    whole = read_requests([data])
    other = read_requests(splits(rng, data))
    assert whole == other, f"framing depends on the reads: {data!r}"
    reqs = accepted([data])
    framed = h11_requests(data)
    for i, (req, body) in enumerate(reqs):
        # what goes on is one request to h11, the same one
        again = h11_requests(forwarded(req, body))
        assert again == [(req.method.encode(), req.path, body)], (data, req.path, again)
        if i >= len(framed):
            # h11 refused these bytes where llhttp took them (a request line split on
            # more than one SP, as RFC 9112 3 allows) or stopped earlier (an upgrade, a
            # close after HTTP/1.0): counted, not compared
            stats["h11 refused"] = stats.get("h11 refused", 0) + 1
            break
        h_method, h_target, h_body = framed[i]
        assert req.method.encode() == h_method, (data, whole, framed)
        if h_target.startswith(b"/"):
            assert req.path == h_target, (data, whole, framed)
        assert body == h_body, (data, whole, framed)
        stats["h11 agreed"] = stats.get("h11 agreed", 0) + 1
        if not req.keep_alive or req.upgrade:
            break  # nothing after it is served


def read_response(reads: list[bytes], head_only: bool, upgrade: bool) -> Seen:
    reader = ResponseReader()
    reader.start(head_only, upgrade)
    seen: Seen = []
    for data in reads:
        if reader.stopped:
            if seen and seen[-1][0] == "trailing":
                seen[-1] = ("trailing", bytes(seen[-1][1]) + data)  # type: ignore[arg-type]
            continue
        for ev in reader.feed(data):
            seen.append(_comparable_response(ev, reader))
            if seen[-1][0] == "data" and len(seen) > 1 and seen[-2][0] == "data":
                seen[-2:] = [("data", bytes(seen[-2][1]) + bytes(seen[-1][1]))]  # type: ignore[arg-type]
    seen.append(("no_reuse", reader.no_reuse))
    return seen


def _comparable_response(ev: RespEvent, reader: ResponseReader) -> tuple[object, ...]:
    if isinstance(ev, bytes):
        return ("data", ev)
    if ev is HEAD:
        return ("head", reader.status, reader.reason, tuple(reader.raw_headers), reader.upgraded)
    if ev is RESP_END:
        return ("end",)
    if isinstance(ev, Info):
        return ("info", ev.status, ev.reason, tuple(ev.headers))
    if isinstance(ev, Trailing):
        return ("trailing", ev.data)
    if isinstance(ev, Broken):
        return ("broken", str(ev.error).split(":")[0])
    assert ev is STRAY, ev
    return ("stray",)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


def pick(rng: random.Random) -> bytes:
    # most from valid requests, so many mutants are still accepted and compared
    return mutate(rng, rng.choice(VALID if rng.random() < 0.7 else SEEDS))


def test_request_reader_fuzz(rng: random.Random) -> None:
    stats: dict[str, int] = {}
    for _ in range(CASES):
        data = pick(rng)
        if rng.random() < 0.3:  # pipelined behind another
            data = pick(rng) + data
        check_request_bytes(rng, data, stats)
        kinds = read_requests([data])
        key = str(kinds[-1][0]) if kinds else "need_data"
        stats[key] = stats.get(key, 0) + 1
    # the corpus reaches every kind of ending, so the invariants were tested on each, and
    # most accepted requests were compared with h11
    assert {"end", "failed", "upgrade", "overflow", "too_large"} <= set(stats), stats
    assert stats["h11 agreed"] > 5 * stats.get("h11 refused", 0), stats


def test_response_reader_fuzz(rng: random.Random) -> None:
    for _ in range(CASES):
        data = mutate(rng, rng.choice(RESPONSES))
        head_only = rng.random() < 0.2
        upgrade = rng.random() < 0.3
        whole = read_response([data], head_only, upgrade)
        other = read_response(splits(rng, data), head_only, upgrade)
        # a head cut short by the end of the bytes is the one boundary that counts: the
        # raw-bytes bound is checked per read (llhttp joins a line across reads)
        assert whole == other, f"framing depends on the reads: {data!r}"


def test_reader_events_run_no_event_loop() -> None:
    # no asyncio: the readers run (and are fuzzed) without a loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert read_requests([CORPUS[0]])[-1] == ("end",)
