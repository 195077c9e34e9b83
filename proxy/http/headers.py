"""Header rules for forwarding, pure and on raw bytes: hop-by-hop stripping (including
every header named in Connection), framing left to the proxy, the X-Forwarded-* set,
client-address headers an untrusted client may not set, names with underscores."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

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
# Headers apps and frameworks read as the client's address, scheme, port, prefix or URL
# (Werkzeug ProxyFix, Rack, Spring, IIS, Cloudflare/Akamai setups): from a client that is
# not a trusted proxy they are forged, so they are dropped (server.drop_client_headers).
DROP_CLIENT_HEADERS = (
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-url-scheme",
    "front-end-https",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
)
# set by the proxy itself for an untrusted peer (nginx users configure it; Traefik sets it):
# so always replaced, whatever drop_client_headers says
_REAL_IP = b"x-real-ip"


@dataclass(frozen=True)
class HeaderRules:
    """What upstream_head drops, by peer, built once from the config (the per-request
    cost is one set lookup and one byte search per header)."""

    untrusted: frozenset[bytes]
    trusted: frozenset[bytes]
    # False (nginx underscores_in_headers off): names with "_" are dropped, from every
    # peer. CGI/WSGI map X_Forwarded_For and X-Forwarded-For to the same
    # HTTP_X_FORWARDED_FOR, so an underscore name would slip past every rule here.
    underscores: bool

    @classmethod
    def build(cls, drop_client_headers: Iterable[str], *, underscores: bool) -> HeaderRules:
        drop = {n.lower().encode("ascii") for n in drop_client_headers}
        return cls(_DROP_UP | {_REAL_IP} | drop, _DROP_UP, underscores)


DEFAULT_RULES = HeaderRules.build(DROP_CLIENT_HEADERS, underscores=False)
# an int: `95 in name` is a memchr (~20 ns), `b"_" in name` goes through the buffer
# protocol (~200 ns, a 60% slower upstream_head with ten headers)
_UNDERSCORE: Final = 95  # ord("_"); Final: a constant in a mypyc build, not a lookup


def connection_named(raw: RawHeaders) -> set[bytes]:
    return _named(raw, [n.lower() for n, _ in raw])


def _named(raw: RawHeaders, lowered: list[bytes]) -> set[bytes]:
    """Header names listed in Connection; `lowered`: the names of `raw`, lowercased (each
    name is lowercased once per message, not once per rule)."""
    named: set[bytes] = set()
    if b"connection" not in lowered:
        return named
    for (_, value), low in zip(raw, lowered, strict=True):
        if low == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    named.add(token)
    return named


@functools.lru_cache(maxsize=4096)
def _peer(peer: str) -> tuple[bytes, bytes]:
    """The peer address as bytes and as a Forwarded `for=` element: the same for every
    request of a connection and of a client, so built once."""
    peer_b = peer.encode("ascii", "replace")
    return peer_b, b"for=" + (b'"[' + peer_b + b']"' if b":" in peer_b else peer_b)


def _get(raw: RawHeaders, name: bytes) -> list[bytes]:
    return [v for n, v in raw if n.lower() == name]


def _set(
    xff: bytes, proto: bytes, host: bytes | None, forwarded: bytes, real_ip: bytes | None = None
) -> bytes:
    """The forwarding headers the instance gets, as header lines."""
    parts = [b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: ", proto, b"\r\n"]
    if real_ip is not None:
        parts += (b"X-Real-IP: ", real_ip, b"\r\n")
    if host is not None:
        parts += (b"X-Forwarded-Host: ", host, b"\r\n")
    parts += (b"Forwarded: ", forwarded, b"\r\n")
    return b"".join(parts)


def _forwarding(peer: str, host: bytes | None) -> bytes:
    """The forwarding set for a peer we do not trust: it depends on the peer and the Host
    alone, the same for every request of a connection."""
    peer_b, forwarded = _peer(peer)
    return _set(peer_b, b"http", host, forwarded + b";proto=http", peer_b)


# so built once per peer and Host; a Host longer than a DNS name (255) is built each time,
# so what the cache holds stays small whatever clients send
_forwarding_cached = functools.lru_cache(maxsize=1024)(_forwarding)


def _extended(raw: RawHeaders, peer: str, host: bytes | None) -> bytes:
    """A trusted proxy's X-Forwarded-* and Forwarded, kept and extended with this hop."""
    peer_b, forwarded = _peer(peer)
    xff = peer_b
    prior = _get(raw, b"x-forwarded-for")
    if prior:
        xff = b", ".join([*prior, peer_b])
    proto = (_get(raw, b"x-forwarded-proto") or [b"http"])[-1]
    fhost = (_get(raw, b"x-forwarded-host") or [host or b""])[-1] or None
    prior_fwd = _get(raw, b"forwarded")
    if prior_fwd:
        forwarded = b", ".join([*prior_fwd, forwarded])
    return _set(xff, proto, fhost, forwarded)


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
    rules: HeaderRules = DEFAULT_RULES,
) -> bytes:
    """The request head for an instance: the client's headers minus hop-by-hop and
    framing, the forwarding set, and the framing of the body the proxy itself sends.
    `trusted`: the peer is a proxy we trust, so its X-Forwarded-* (and the other
    client-address headers) are kept and extended."""
    lowered = [n.lower() for n, _ in raw]
    named = _named(raw, lowered) - PROTECTED
    drop = rules.trusted if trusted else rules.untrusted
    if named and not named <= drop:  # browsers' Connection: keep-alive is: no copy
        drop = drop | named
    underscores = rules.underscores
    parts = [method.encode("ascii"), b" ", path, b" HTTP/1.1\r\n"]
    for (name, value), low in zip(raw, lowered, strict=True):
        if low not in drop and (underscores or _UNDERSCORE not in low):
            parts += (name, b": ", value, b"\r\n")
    if trusted:
        parts.append(_extended(raw, peer, host))
    else:
        short = host is None or len(host) <= 255
        parts.append((_forwarding_cached if short else _forwarding)(peer, host))
    if websocket:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    parts.append(framing)
    parts.append(b"\r\n")
    return b"".join(parts)


def downstream_raw(raw: RawHeaders) -> RawHeaders:
    """Response headers for the client; the proxy frames the body itself."""
    lowered = [n.lower() for n, _ in raw]
    named = _named(raw, lowered)
    drop = _DROP_DOWN | named if named else _DROP_DOWN
    return [h for h, low in zip(raw, lowered, strict=True) if low not in drop]


def server_timing(queued: float, cold: bool, upstream: float, first: bool = False) -> str:
    """`cold` is the wait for a start; an instance's first answer can cost far more than
    that (a framework's lazy URL resolver, templates, connections), and is said so."""
    # one f-string: this runs on every response
    q, u = queued * 1000, upstream * 1000
    up = (
        f'upstream;dur={u:.1f};desc="first request of a fresh instance"'
        if first
        else (f"upstream;dur={u:.1f}")
    )
    if cold:
        cold_part = f'cold;dur={q:.1f};desc="waited on a cold start"'
        return f"queue;dur={q:.1f}, {cold_part}, {up}"
    return f"queue;dur={q:.1f}, {up}"
