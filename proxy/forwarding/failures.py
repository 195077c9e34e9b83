"""What the client is told when an instance fails before answering: one mapping from the
upstream error to the status, its fixed text and the metric label, for forwarding and
tunnels alike (nginx's codes: a connect or send timeout is 504, other failures 502)."""

from __future__ import annotations

from dataclasses import dataclass

from forkproxy.proxy.http.upstream import ConnectFailed, ConnectTimeout, SendTimeout, UpstreamError

INSTANCE_FAILED = "Bad Gateway: instance failed"


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    text: str
    kind: str  # forkproxy_upstream_errors_total{kind}


def upstream_failure(exc: UpstreamError | TimeoutError, *, websocket: bool = False) -> Failure:
    """`websocket`: a refused handshake, whatever the transport error, says so (and a
    stale pooled connection is not told apart: the tunnel never retries)."""
    if isinstance(exc, TimeoutError):  # no response head within upstream_header_timeout
        return Failure(504, "Gateway Timeout: instance did not answer in time", "timeout")
    kind = "stale" if exc.stale and not websocket else exc.kind
    if isinstance(exc, ConnectTimeout):  # nginx: proxy_connect_timeout
        return Failure(504, "Gateway Timeout: instance did not accept in time", kind)
    if websocket:
        return Failure(502, "Bad Gateway: instance refused the websocket", kind)
    if isinstance(exc, SendTimeout):  # nginx: proxy_send_timeout
        return Failure(504, "Gateway Timeout: instance stopped reading", kind)
    if isinstance(exc, ConnectFailed):
        return Failure(502, "Bad Gateway: instance unreachable", kind)
    return Failure(502, INSTANCE_FAILED, kind)
