"""tune's grid over the elastic knobs ("auto" target and keep-alive, routing) and its
comparison with the pool's defaults: pure logic, checked against the proxy's own parser."""

from __future__ import annotations

import math
import tomllib

from forkproxy.loadtest.tune import (
    Measured,
    Point,
    baseline_of,
    config_problems,
    grid,
    needs_baseline_run,
    parse_args,
    snippet,
    versus,
)
from forkproxy.proxy.config import PoolConfig, parse

BASE = {
    "server": {"name": "t"},
    "backend": {"type": "process", "mode": "fork", "app": "examples.app:create_app"},
}


def test_default_grid_holds_auto_values_and_both_routings() -> None:
    points = grid(parse_args(["--max-concurrency", "4"]))
    assert {p.target_concurrency for p in points} == {None, 2.8}  # "auto" and 70 % of 4
    assert {p.idle_ttl for p in points} == {"auto", "2s"}
    assert {p.routing for p in points} == {"pack", "least_loaded"}
    assert len(points) == 8
    # "auto" comes first: the pool's defaults are the grid's first candidate.
    assert points[0] == Point.defaults(4)
    assert not needs_baseline_run(points)


def test_auto_points_parse_to_the_pools_auto_and_defaults() -> None:
    for point in grid(parse_args(["--max-concurrency", "4", "--routing", "least_loaded,pack"])):
        assert config_problems(BASE, point) == "", point
    doc = {**BASE, "pool": Point.defaults(6).pool()}
    pool = parse(doc, "<t>").pool
    # The baseline is what the pool does with only max_concurrency set.
    assert pool == PoolConfig(max_concurrency=6)
    assert Point.defaults(6).pool()["target_concurrency"] == "auto"


def test_bad_routing_is_refused_naming_the_key() -> None:
    (point,) = grid(
        parse_args(
            [
                "--max-concurrency",
                "4",
                "--target-concurrency",
                "auto",
                "--idle-ttl",
                "auto",
                "--routing",
                "random",
            ]
        )
    )
    problem = config_problems(BASE, point)
    assert "pool.routing" in problem and "least_loaded" in problem and "pack" in problem


def m(point: Point, p99: float, inst_s: float, error: str = "") -> Measured:
    return Measured(point, 10, 100, 0, p99, inst_s, 3, error)


def test_recommendation_is_compared_with_the_defaults_at_its_max_concurrency() -> None:
    best = m(Point(4, 2.8, 0, "2s", "least_loaded"), 120, 30.0)
    other = m(Point.defaults(10), 90, 60.0)
    assert baseline_of([best, other], best) is None  # defaults at 4 not measured
    assert needs_baseline_run([best.point, other.point])
    base = m(Point.defaults(4), 150, 40.0)
    assert baseline_of([best, other, base], best) is base
    line = versus(best, base)
    assert line == (
        "vs defaults (max_concurrency 4): instance-seconds 40.0 -> 30.0 (-25 %), "
        "p99 150 -> 120 ms (-20 %), failed 0/100 -> 0/100"
    )
    text = snippet(best, True, parse_args([]), base)
    assert "# " + line in text
    assert tomllib.loads(text)["pool"] == {
        "max_concurrency": 4,
        "target_concurrency": 2.8,
        "warm_pool": 0,
        "idle_ttl": "2s",
        "routing": "least_loaded",
    }
    assert versus(base, base).endswith("the recommendation is the defaults")
    failed = m(Point.defaults(4), math.nan, math.nan, error="proxy died")
    assert versus(best, failed).endswith("failed: proxy died")
    assert versus(best, None).endswith("not measured")
