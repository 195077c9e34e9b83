"""Request rules llhttp leaves to us: versions, framing headers, Expect, Host and the
request target (llhttp already rejects CL+TE, duplicate CL, bad chunk sizes, obs-fold,
bare LF)."""

from __future__ import annotations

import functools
import re

from forkproxy.proxy.http.request import ClientError, Request

# RFC 3986 authority without userinfo (RFC 9110 7.2: Host = uri-host [ ":" port ]):
# IP-literal, or reg-name / IPv4 (unreserved, pct-encoded, sub-delims), then a port
_AUTHORITY = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::([0-9]*))?"
)


@functools.lru_cache(maxsize=1024)  # a client sends the same Host on every request
def valid_authority(value: bytes) -> bool:
    m = _AUTHORITY.fullmatch(value)
    if m is None:
        return False
    port = m.group(1)
    return not port or (len(port) <= 5 and int(port) <= 65535)


# Methods whose framing the servers behind a proxy disagree on: aiohttp and uvicorn take
# CONNECT as a tunnel and ignore its Content-Length, so a body framed by the length here is
# a second request there. A reverse proxy has no tunnel to offer: answered, never
# forwarded (nginx answers 405 and HAProxy 400 in their reverse-proxy modes).
REFUSED_METHODS = frozenset({"CONNECT"})


def validate(req: Request, default_host: bytes) -> None:
    if req.version not in ("1.1", "1.0"):  # 0.9, 2.0 on an HTTP/1 connection: a client error
        raise ClientError(400, "Bad Request: unsupported HTTP version")
    hosts = 0
    te: bytes | None = None
    tes = 0
    for name, value in req.headers:
        lname = name.lower()
        if lname == b"host":
            hosts += 1
            req.host = value
        elif lname == b"content-length":
            req.content_length = int(value)
        elif lname == b"transfer-encoding":
            te = value
            tes += 1
        elif lname == b"expect" and req.version == "1.1":
            # RFC 9110 10.1.1: an expectation in an HTTP/1.0 request is ignored (and
            # such a client is never sent a 100 Continue)
            if value.lower() != b"100-continue":
                raise ClientError(417, "Expectation Failed")
            req.expect_continue = True
    if te is not None:
        if tes > 1:
            raise ClientError(400, "Bad Request: more than one Transfer-Encoding header")
        if req.version != "1.1":
            raise ClientError(400, "Bad Request: Transfer-Encoding in HTTP/1.0")
        if te.strip().lower() != b"chunked":
            raise ClientError(400, "Bad Request: unsupported Transfer-Encoding")
        req.chunked = True
    if req.version == "1.1" and hosts != 1:
        raise ClientError(400, "Bad Request: exactly one Host header is required")
    if hosts > 1:
        raise ClientError(400, "Bad Request: more than one Host header")
    if hosts == 0:  # HTTP/1.0 without Host: the instance gets HTTP/1.1, which needs one
        req.host = default_host
        req.headers.append((b"Host", req.host))
    elif req.host is not None and not valid_authority(req.host):
        raise ClientError(400, "Bad Request: invalid Host")
    path = req.path
    if not path.startswith(b"/"):
        if path == b"*" and req.method == "OPTIONS":
            return
        # absolute-form (RFC 9112 3.2.2): forward the origin-form part
        scheme, sep, rest = path.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise ClientError(400, "Bad Request: invalid request target")
        slash = rest.find(b"/")
        query = rest.find(b"?")
        if slash == -1 or (query != -1 and query < slash):
            cut = query if query != -1 else len(rest)
            req.path = b"/" + rest[cut:]
            authority = rest[:cut]
        else:
            req.path = rest[slash:]
            authority = rest[:slash]
        if not authority or b"@" in authority or not valid_authority(authority):
            raise ClientError(400, "Bad Request: invalid request target")
        # RFC 9112 3.2.2: the target's authority replaces the Host header
        req.host = authority
        req.headers = [(n, v) for n, v in req.headers if n.lower() != b"host"]
        req.headers.append((b"Host", authority))
    if req.method in REFUSED_METHODS:  # (an authority-form target was a 400 above)
        raise ClientError(501, f"Not Implemented: {req.method} is not served by a reverse proxy")


def tunnelled(req: Request) -> bool:
    """A websocket handshake (RFC 6455 4.1: GET, HTTP/1.1, no body) is the only upgrade
    the proxy tunnels. Any other (h2c, a body-carrying one) is ignored, as RFC 9110 7.8
    allows: the request is served as plain HTTP/1.1 and framed by its CL/TE."""
    if req.method != "GET" or req.version != "1.1" or req.chunked or req.content_length:
        return False
    value = req.header(b"upgrade")
    return value is not None and value.strip().lower() == b"websocket"
