"""Pure pieces of the live view: the loopback check behind the exposure warning,
top's sparkline, the charts' series per app."""

from __future__ import annotations

from typing import Any

import pytest

from forkproxy.proxy.admin import _is_loopback
from forkproxy.proxy.admin_view import AdminView, Serving
from forkproxy.proxy.config import PoolConfig, ServerConfig
from forkproxy.proxy.live import Sampler
from forkproxy.proxy.metrics import Metrics
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


class _Pool:
    """A pool as the sampler reads it: its rows and queue, set by the test."""

    def __init__(self, max_concurrency: int) -> None:
        self.cfg = PoolConfig(max_concurrency=max_concurrency)
        self.rows: list[dict[str, Any]] = []
        self.queued = 0
        self.serve_problem = None
        self.recent_failures: list[dict[str, Any]] = []

    def describe(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]


def _row(id: str, state: str, in_flight: int) -> dict[str, Any]:
    return {"id": id, "state": state, "in_flight": in_flight}


def _sampler(pools: dict[str, _Pool]) -> Sampler:
    def serving(name: str) -> Serving:
        return Serving(pools[name], 1, "me", "test", "process")

    first = next(iter(pools))
    view = AdminView(
        ServerConfig(),
        Metrics(),
        lambda: serving(first),
        lambda: {name: serving(name) for name in pools},
        lambda: True,
    )
    return Sampler(view)


async def test_series_per_app_and_for_the_machine() -> None:
    shop, blog = _Pool(max_concurrency=2), _Pool(max_concurrency=4)
    sampler = _sampler({"shop": shop, "blog": blog})
    shop.rows = [_row("s1", "ready", 0)]
    first = sampler.sample()
    assert first["series"]["blog"]["states"] == {}
    assert first["series"]["blog"]["starts_per_s"] == 0  # nothing to compare with yet

    # blog gets busy: three new instances, five in flight, two queued; shop stays as it was
    blog.rows = [_row("b1", "ready", 4), _row("b2", "ready", 1), _row("b3", "starting", 0)]
    blog.queued = 2
    sampler._seen = {k: (t - 1.0, ids) for k, (t, ids) in sampler._seen.items()}
    s = sampler.sample()
    series = s["series"]
    assert series["blog"]["states"] == {"ready": 2, "starting": 1}
    assert (series["blog"]["in_flight"], series["blog"]["queued"]) == (5, 2)
    assert series["blog"]["lower_bound"] == 2  # ceil(5 / 4): blog's own max_concurrency
    assert 1.5 < series["blog"]["starts_per_s"] <= 3.0  # three new ids in a bit over 1 s
    assert series["shop"] == {
        "queued": 0,
        "in_flight": 0,
        "states": {"ready": 1},
        "lower_bound": 0,
        "starts_per_s": 0.0,
        "spares": 1,
    }
    machine = series["*"]
    assert machine["states"] == {"ready": 3, "starting": 1}
    assert (machine["in_flight"], machine["queued"], machine["lower_bound"]) == (5, 2, 2)
    assert machine["spares"] == 2
    # the top-level series stay the first app's (`forkproxy top` reads them)
    assert (s["in_flight"], s["queued"]) == (0, 0)
    # the history the page gets on connect carries every app's series
    assert sampler.history[-1]["series"] == series

    # an instance seen before is no start
    sampler._seen = {k: (t - 1.0, ids) for k, (t, ids) in sampler._seen.items()}
    assert sampler.sample()["series"]["blog"]["starts_per_s"] == 0


def test_each_app_row_carries_its_own_settings_and_failures() -> None:
    # the page's settings and failures panels follow the picked app: each row has its own
    shop, blog = _Pool(max_concurrency=2), _Pool(max_concurrency=4)
    blog.recent_failures = [{"reason": "exited:1", "message": "boom"}]
    rows = {a["app"]: a for a in _sampler({"shop": shop, "blog": blog}).sample()["apps"]}
    assert rows["shop"]["settings"]["max_concurrency"] == 2
    assert rows["blog"]["settings"]["max_concurrency"] == 4
    assert rows["blog"]["settings_source"] == "config"  # this stand-in resolves no auto
    assert (rows["shop"]["failures"], rows["blog"]["failures"]) == ([], blog.recent_failures)
