"""Header rules for forwarding, pure and on raw bytes: hop-by-hop stripping (including
every header named in Connection), framing left to the proxy, the X-Forwarded-* set."""

from __future__ import annotations

RawHeaders = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Proxy-Authorization / Proxy-Authenticate are not in the set: forkproxy authenticates
# nobody, so they are for the app (nginx and HAProxy pass them on; RFC 9110 11.7).
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})
# named in Connection or not, the proxy sets these itself: a client cannot make it drop them
PROTECTED = FORWARDED | {b"host"}
_DROP_UP = HOP_BY_HOP | FRAMING | FORWARDED | {b"expect"}
_DROP_DOWN = HOP_BY_HOP | FRAMING


def connection_named(raw: RawHeaders) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    named.add(token)
    return named


def _get(raw: RawHeaders, name: bytes) -> list[bytes]:
    return [v for n, v in raw if n.lower() == name]


def upstream_head(
    method: str,
    path: bytes,
    raw: RawHeaders,
    *,
    peer: str,
    trusted: bool = False,
    host: bytes | None,
    framing: bytes,
    websocket: bool = False,
) -> bytes:
    """The request head for an instance: the client's headers minus hop-by-hop and
    framing, the forwarding set, and the framing of the body the proxy itself sends.
    `trusted`: the peer is a proxy we trust, so its X-Forwarded-* are kept and extended."""
    named = connection_named(raw) - PROTECTED
    drop = _DROP_UP | named if named else _DROP_UP
    parts = [method.encode("ascii"), b" ", path, b" HTTP/1.1\r\n"]
    for name, value in raw:
        if name.lower() not in drop:
            parts += (name, b": ", value, b"\r\n")
    peer_b = peer.encode("ascii", "replace")
    xff = peer_b
    proto = b"http"
    fhost = host
    forwarded = b"for=" + (b'"[' + peer_b + b']"' if b":" in peer_b else peer_b)
    if trusted:
        prior = _get(raw, b"x-forwarded-for")
        if prior:
            xff = b", ".join([*prior, peer_b])
        proto = (_get(raw, b"x-forwarded-proto") or [proto])[-1]
        fhost = (_get(raw, b"x-forwarded-host") or [fhost or b""])[-1] or None
        prior_fwd = _get(raw, b"forwarded")
        if prior_fwd:
            forwarded = b", ".join([*prior_fwd, forwarded])
    else:
        forwarded += b";proto=http"
    parts += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n")
    if fhost is not None:
        parts += (b"X-Forwarded-Host: ", fhost, b"\r\n")
    parts += (b"Forwarded: ", forwarded, b"\r\n")
    if websocket:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


def downstream_raw(raw: RawHeaders) -> RawHeaders:
    """Response headers for the client; the proxy frames the body itself."""
    named = connection_named(raw)
    drop = _DROP_DOWN | named if named else _DROP_DOWN
    return [(n, v) for n, v in raw if n.lower() not in drop]


def server_timing(queued: float, cold: bool, upstream: float) -> str:
    parts = [f"queue;dur={queued * 1000:.1f}"]
    if cold:
        parts.append(f'cold;dur={queued * 1000:.1f};desc="waited on a cold start"')
    parts.append(f"upstream;dur={upstream * 1000:.1f}")
    return ", ".join(parts)
