"""Pure pieces of the live view: the loopback check behind the exposure warning,
top's sparkline."""

from __future__ import annotations

import pytest

from forkproxy.proxy.admin import _is_loopback
from forkproxy.proxy.top import spark


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
