"""The replay cases: the hardening corpus and mutation lists (imported, not copied),
the attacks of issue 21, and the response-side misbehaviour each server is asked for.

A case is a client's bytes with id placeholders: the runner gives every request its own
X-Req-Id (`inject`), so any answer can be traced to the request it belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from tests.proxy.hardening.test_fuzz_differential import EXTRA_HEADERS
from tests.proxy.hardening.test_fuzz_heads import CORPUS, FRAMING
from tests.proxy.hardening.test_smuggling import BAD
from tests.proxy.replay.marker import ID_HEADER, late


@dataclass(frozen=True)
class Case:
    name: str
    # b"{id.m}" becomes the id of the first request, b"{id.s}" of the smuggled one: both
    # 6 bytes, as the ids are ("q012-m"), so Content-Lengths stay right
    wire: bytes
    script: str = ""  # the raw scripted server only: raw_script's name

    def bytes_for(self, prefix: str) -> bytes:
        return fill(self.wire, prefix)


def fill(data: bytes, prefix: str) -> bytes:
    return data.replace(b"{id.m}", b"%b-m" % prefix.encode()).replace(
        b"{id.s}", b"%b-s" % prefix.encode()
    )


def inject(wire: bytes, rid: bytes = b"{id.m}") -> bytes:
    """`wire` with an X-Req-Id header after its first line."""
    at = wire.find(b"\n") + 1
    if at == 0:
        return wire
    return wire[:at] + b"%b: %b\r\n" % (ID_HEADER.encode(), rid) + wire[at:]


SMUGGLED = inject(b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", b"{id.s}")


def _post(method: bytes, head: bytes, body: bytes) -> bytes:
    return inject(b"%b /h HTTP/1.1\r\nHost: t\r\n%b\r\n%b" % (method, head, body))


def request_cases() -> list[Case]:
    out = [Case(f"bad/{name}", inject(wire) + SMUGGLED) for name, wire in sorted(BAD.items())]
    out += [Case(f"corpus/{i}", inject(wire) + SMUGGLED) for i, wire in enumerate(CORPUS)]
    for i, line in enumerate(FRAMING):
        out.append(Case(f"framing/{i}/post", _post(b"POST", line, b"abc" + SMUGGLED)))
        chunked = b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED
        out.append(Case(f"framing/{i}/get-chunked", _post(b"GET", line, chunked)))
    for i, line in enumerate(EXTRA_HEADERS):
        cl = b"Content-Length: %d\r\n" % len(SMUGGLED)
        out.append(Case(f"extra/{i}/post", _post(b"POST", line + cl, SMUGGLED)))
        out.append(Case(f"extra/{i}/get", _post(b"GET", line, b"") + SMUGGLED))
    cl = b"Content-Length: %d\r\n" % len(SMUGGLED)
    te = b"Transfer-Encoding: chunked\r\n"
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    attacks = {
        # issue 21 (a): CONNECT is a tunnel to aiohttp and uvicorn: the body is a request
        "connect-origin-cl": b"CONNECT /x HTTP/1.1\r\nHost: t\r\n" + cl + b"\r\n" + SMUGGLED,
        "connect-absolute-cl": b"CONNECT http://t/x HTTP/1.1\r\nHost: t\r\n"
        + cl
        + b"\r\n"
        + SMUGGLED,
        "connect-authority-cl": b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n"
        + cl
        + b"\r\n"
        + SMUGGLED,
        "connect-origin-chunked": b"CONNECT /x HTTP/1.1\r\nHost: t\r\n" + te + b"\r\n" + chunked,
        "connect-origin-empty": b"CONNECT /x HTTP/1.1\r\nHost: t\r\n\r\n" + SMUGGLED,
        "head-with-body": b"HEAD /h HTTP/1.1\r\nHost: t\r\n" + cl + b"\r\n" + SMUGGLED,
        "get-with-body": b"GET /h HTTP/1.1\r\nHost: t\r\n" + cl + b"\r\n" + SMUGGLED,
        "options-with-body": b"OPTIONS /h HTTP/1.1\r\nHost: t\r\n" + cl + b"\r\n" + SMUGGLED,
        "delete-chunked": b"DELETE /h HTTP/1.1\r\nHost: t\r\n" + te + b"\r\n" + chunked,
        "trace-with-body": b"TRACE /h HTTP/1.1\r\nHost: t\r\n" + cl + b"\r\n" + SMUGGLED,
    }
    out += [Case(f"attack/{name}", inject(wire)) for name, wire in attacks.items()]
    return out


def response_cases() -> list[Case]:
    """Misbehaviour asked of a real server's app (marker.MISBEHAVE)."""
    asks = [
        ("HEAD", "/r/head-body"),
        ("HEAD", "/r/head-late"),
        ("GET", "/r/head-late"),
        ("HEAD", "/r/file"),
        ("GET", "/r/204-body"),
        ("GET", "/r/304-body"),
        ("HEAD", "/r/204-body"),
        ("GET", "/r/overlong"),
        ("HEAD", "/r/overlong"),
    ]
    return [
        Case(
            f"response/{m.lower()}{path.removeprefix('/r')}",
            inject(b"%b %b HTTP/1.1\r\nHost: t\r\n\r\n" % (m.encode(), path.encode())),
        )
        for m, path in asks
    ]


def _final(rid: str) -> bytes:
    text = b"seen=%b" % rid.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(text), text)


def raw_script(name: str, rid: str) -> tuple[str, list[bytes]]:
    """(method, answer parts) of a raw case: answers no real server gives on its own."""
    out = late(rid)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out)
    info = b"HTTP/1.1 199 X\r\nContent-Length: %d\r\n\r\n%b" % (len(out), out)
    scripts = {
        # issue 21 (b) family: a 1xx with a body, bad status codes
        "1xx-with-body": ("GET", [info, _final(rid)]),
        "1xx-with-body-same-write": ("GET", [info + _final(rid)]),
        "status-0": ("GET", [b"HTTP/1.1 0 X\r\nContent-Length: 2\r\n\r\nok"]),
        "status-600": ("GET", [b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok"]),
        "status-099": ("GET", [b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok"]),
        # late bytes: the rest arrives after the proxy has read a complete answer
        "head-then-body": ("HEAD", [head, out]),
        "204-then-body": ("GET", [b"HTTP/1.1 204 No Content\r\n\r\n", out]),
        "304-then-body": ("GET", [b"HTTP/1.1 304 Not Modified\r\n\r\n", out]),
        # in one write: bytes arriving later could be the answer to the next request
        # sent on that connection, which no proxy that reuses connections can tell
        "200-then-more": ("GET", [_final(rid) + out]),
    }
    return scripts[name]


RAW = [
    "1xx-with-body",
    "1xx-with-body-same-write",
    "status-0",
    "status-600",
    "status-099",
    "head-then-body",
    "204-then-body",
    "304-then-body",
    "200-then-more",
]


def raw_cases() -> list[Case]:
    """Cases for the scripted raw instance: the request goes to /s/ID, whose script the
    runner writes first (raw_script)."""
    return [
        Case(
            f"raw/{name}",
            inject(b"%b /s/{id.m} HTTP/1.1\r\nHost: t\r\n\r\n" % raw_script(name, "")[0].encode()),
            script=name,
        )
        for name in RAW
    ]
