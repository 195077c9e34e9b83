"""Pure pieces of the live view: the failure ring read from the pool's log records,
the loopback check behind the exposure warning, top's sparkline."""

from __future__ import annotations

import logging

import pytest

from proxy.admin import _is_loopback
from proxy.live import FAILURES_KEPT, StartFailures
from proxy.top import spark


def _record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("forkproxy.pool", level, __file__, 1, msg, args, None)


def test_failures_keep_the_pools_start_failures_only() -> None:
    ring = StartFailures()
    fmt = "instance %s failed to start (%s): %s; attempt %d, next in %.2fs"
    ring.handle(_record(fmt, "i-1", "died", RuntimeError("exited:3"), 1, 0.05))
    ring.handle(_record("instance %s died: %s", "i-2", "exited:1"))  # a death, not a start
    ring.handle(_record("starting instance %s (%s)", "i-3", "demand", level=logging.INFO))
    assert [(f["instance"], f["reason"], f["error"]) for f in ring.recent] == [
        ("i-1", "died", "exited:3")
    ]
    for i in range(FAILURES_KEPT + 5):
        ring.handle(_record(fmt, f"i-{i}", "timeout", TimeoutError(), 1, 0.1))
    assert len(ring.recent) == FAILURES_KEPT
    assert ring.recent[-1]["instance"] == f"i-{FAILURES_KEPT + 4}"


def test_failures_survive_a_changed_message_shape() -> None:
    ring = StartFailures()
    ring.handle(_record("instance %s failed to start", "i-9"))
    assert ring.recent[0]["instance"] == "i-9"
    assert ring.recent[0]["error"] == "instance i-9 failed to start"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("proxy.example", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


def test_spark_scales_to_the_peak() -> None:
    assert spark([]) == ""
    assert spark([0, 0]) == "  "
    assert spark([0, 4, 8]) == " ▄█"
    assert len(spark(list(range(500)))) == 60
