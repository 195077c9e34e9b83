"""The one mapping from an instance's failure to what the client is told (pure logic):
forwarding's codes after nginx, a websocket handshake's own text, the metric label."""

from __future__ import annotations

import pytest

from forkproxy.proxy.forwarding.failures import Failure, upstream_failure
from forkproxy.proxy.http.upstream import (
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    SendTimeout,
    UpstreamError,
)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            TimeoutError(),
            Failure(504, "Gateway Timeout: instance did not answer in time", "timeout"),
        ),
        (
            ConnectTimeout("x"),
            Failure(504, "Gateway Timeout: instance did not accept in time", "connect_timeout"),
        ),
        (
            SendTimeout("x", sent=True),
            Failure(504, "Gateway Timeout: instance stopped reading", "send_timeout"),
        ),
        (ConnectFailed("x"), Failure(502, "Bad Gateway: instance unreachable", "connect")),
        (
            Disconnected("x", sent=True),
            Failure(502, "Bad Gateway: instance failed", "disconnected"),
        ),
        (
            Disconnected("x", sent=True, stale=True),
            Failure(502, "Bad Gateway: instance failed", "stale"),
        ),
    ],
)
def test_forwarding(exc: UpstreamError | TimeoutError, expected: Failure) -> None:
    assert upstream_failure(exc) == expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            TimeoutError(),
            Failure(504, "Gateway Timeout: instance did not answer in time", "timeout"),
        ),
        (
            ConnectTimeout("x"),
            Failure(504, "Gateway Timeout: instance did not accept in time", "connect_timeout"),
        ),
        (
            SendTimeout("x"),
            Failure(502, "Bad Gateway: instance refused the websocket", "send_timeout"),
        ),
        (
            ConnectFailed("x"),
            Failure(502, "Bad Gateway: instance refused the websocket", "connect"),
        ),
        (
            Disconnected("x", stale=True),
            Failure(502, "Bad Gateway: instance refused the websocket", "disconnected"),
        ),
    ],
)
def test_websocket(exc: UpstreamError | TimeoutError, expected: Failure) -> None:
    assert upstream_failure(exc, websocket=True) == expected
