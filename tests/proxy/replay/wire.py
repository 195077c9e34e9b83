"""Splitting recorded bytes into what each side meant, and a raw-socket client.

- frame(): the requests in bytes sent to a server, framed by h11 (not llhttp, the
  proxy's parser) as plain messages: a CONNECT or an upgrade is refused, so the bytes
  after it are the next request, which is what a proxy that forwards it means them to be;
- server_seen(): the requests a server parsed and handed to the app, read off the
  X-Replay-Seen headers in the bytes it wrote (marker.py);
- unframed(): for one upstream connection, what the server answered that the proxy did
  not send as a request (the smuggling invariant)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from dataclasses import dataclass, field

import h11

from tests.proxy.hardening.strict import Judged, judge
from tests.proxy.replay.marker import HEADER, ID_HEADER


@dataclass(frozen=True)
class Req:
    rid: str
    method: str
    body_len: int
    sha: str
    target: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.method} {self.target} id={self.rid} body={self.body_len}"


def _req(ev: h11.Request, body: bytes) -> Req:
    rid = next((v.decode("latin-1") for n, v in ev.headers if n == ID_HEADER.lower().encode()), "")
    return Req(
        rid or "anon",
        ev.method.decode(),
        len(body),
        hashlib.sha256(body).hexdigest()[:12],
        ev.target.decode("latin-1"),
    )


def frame(data: bytes) -> tuple[list[Req], str | None]:
    """The requests h11 frames in `data` (all of what was sent), and its error if it
    stopped on one."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[Req] = []
    cur: h11.Request | None = None
    body = b""
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                cur, body = ev, b""
            elif isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                assert cur is not None
                out.append(_req(cur, body))
                # 400: never a protocol switch (a 101, or a 2xx to CONNECT)
                conn.send(h11.Response(status_code=400, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out, None
                conn.start_next_cycle()
            else:  # NEED_DATA (cut short), ConnectionClosed
                return out, None
    except h11.ProtocolError as exc:
        return out, str(exc)


_SEEN = re.compile(
    rb"(?im)^" + HEADER.encode() + rb":[ \t]*seen=([^;\r\n]*);([^;\r\n]*);([^;\r\n]*);(\d+);(\w+)"
)


def server_seen(data: bytes) -> list[Req]:
    return [
        Req(m[1].decode(), m[2].decode(), int(m[4]), m[5].decode(), m[3].decode("latin-1"))
        for m in _SEEN.finditer(data)
    ]


def unframed(c2s: bytes, s2c: bytes) -> list[tuple[Req, str]]:
    """What the server parsed on this connection other than the proxy's requests: each
    request it answered must be, in order, one the proxy framed with the same method,
    id and body. A request matched by id but parsed differently (a body taken for the
    next request) is reported once, and the rest is still matched in order."""
    sent, error = frame(c2s)
    stopped = f" (h11 stopped: {error})" if error else ""
    problems = []
    i = 0
    for got in server_seen(s2c):
        at = next((k for k in range(i, len(sent)) if sent[k].rid == got.rid), None)
        if at is None:
            problems.append(
                (got, f"server parsed [{got}], a request the proxy never sent{stopped}")
            )
            continue
        i = at + 1
        if sent[at] != got:
            problems.append((got, f"server parsed [{got}] where the proxy sent [{sent[at]}]"))
    return problems


IDS = re.compile(rb"(?:seen|late)=([A-Za-z0-9_.-]+)")


def ids(data: bytes) -> list[str]:
    """Every request id in the bytes a client received (markers, stray responses)."""
    return [m.decode() for m in IDS.findall(data)]


@dataclass
class Talk:
    data: bytes
    closed: bool

    def judged(self, methods: list[str]) -> Judged:
        return judge(self.data, methods)


async def talk(port: int, wire: bytes, methods: list[str], timeout: float = 3.0) -> Talk:
    """Send `wire` in one write; read until an answer to each of `methods` is complete,
    the proxy closes, or `timeout`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    closed = False
    try:
        writer.write(wire)
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                got += chunk
                if methods and len(judge(got, methods).answers) >= len(methods):
                    break
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return Talk(got, closed)
