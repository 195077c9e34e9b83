"""Header rules for forwarding, pure: hop-by-hop stripping (including every header
named in Connection) and the X-Forwarded-* set."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
FRAMING = frozenset({"content-length", "transfer-encoding"})
FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})
# Named in Connection or not, the proxy sets these itself; a client cannot make it drop them.
PROTECTED = FORWARDED | {"host"}


def connection_tokens(values: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for value in values:
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                out.add(token)
    return out


def _strip(headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: set[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def upstream_request_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    *,
    peer: str,
    scheme: str,
    host: str | None,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Headers to send to the instance. Framing headers go too: the caller sets them
    from what it actually sends."""
    named = connection_tokens(headers.getall("Connection", ())) - PROTECTED
    drop = set(HOP_BY_HOP) | FRAMING | FORWARDED | named
    if websocket:
        drop |= {n.lower() for n in headers if n.lower().startswith("sec-websocket-")}
    out = _strip(headers, drop)
    out["X-Forwarded-For"] = peer
    out["X-Forwarded-Proto"] = scheme
    if host is not None:
        out["X-Forwarded-Host"] = host
    return out


def downstream_response_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
) -> CIMultiDict[str]:
    """Headers to send back to the client; the proxy frames the body itself."""
    named = connection_tokens(headers.getall("Connection", ()))
    return _strip(headers, set(HOP_BY_HOP) | FRAMING | named)


def server_timing(queued: float, cold: bool, upstream: float) -> str:
    parts = [f"queue;dur={queued * 1000:.1f}"]
    if cold:
        parts.append(f'cold;dur={queued * 1000:.1f};desc="waited on a cold start"')
    parts.append(f"upstream;dur={upstream * 1000:.1f}")
    return ", ".join(parts)
