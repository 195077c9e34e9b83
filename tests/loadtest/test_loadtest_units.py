"""Pure pieces of the benchmark and tune: statistics, TOML writing, parsers, grid and choice."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from forkproxy.loadtest.load.httpload import parse_wrk
from forkproxy.loadtest.load.locustrun import LocustRun, read_final
from forkproxy.loadtest.report.markdown import table_md
from forkproxy.loadtest.report.stats import (
    instance_seconds,
    instance_seconds_lower_bound,
    percentile,
    time_to_scale_in,
)
from forkproxy.loadtest.report.table import render
from forkproxy.loadtest.run import configs
from forkproxy.loadtest.run.sampler import parse_instances
from forkproxy.loadtest.sections.model import Table
from forkproxy.loadtest.tune import (
    MIN_RUN_S,
    OVERHEAD_S,
    Measured,
    Point,
    grid,
    parse_args,
    pick,
    plan,
    snippet,
)


def inst(state: str = "ready", in_flight: int = 0) -> dict[str, object]:
    return {"id": "i", "state": state, "in_flight": in_flight}


def test_percentile_interpolates() -> None:
    assert percentile([3, 1, 2, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile(list(range(101)), 99) == 99
    assert math.isnan(percentile([], 50))


def test_instance_seconds_counts_live_instances_only() -> None:
    samples = [
        (0.0, [inst(), inst("starting")]),
        (1.0, [inst(), inst("stopped")]),
        (3.0, [inst("failed")]),
        (4.0, []),
    ]
    # 2 live for 1 s, 1 live for 2 s, 0 for 1 s; the last sample closes the interval.
    assert instance_seconds(samples) == 4.0


def test_lower_bound_is_ceil_of_mean_in_flight_per_second() -> None:
    samples = [
        (0.0, [inst(in_flight=10), inst(in_flight=5)]),  # second 0: mean 12 -> ceil(12/10) = 2
        (0.5, [inst(in_flight=9)]),
        (1.2, [inst(in_flight=0)]),  # second 1: 0 -> 0
        (2.0, [inst(in_flight=1)]),  # second 2: 1 -> 1
    ]
    assert instance_seconds_lower_bound(samples, 10) == 3
    with pytest.raises(ValueError):
        instance_seconds_lower_bound(samples, 0)


def test_time_to_scale_in() -> None:
    samples = [(0.0, [inst()] * 3), (5.0, [inst()] * 2), (6.5, [inst("draining")]), (8.0, [])]
    assert time_to_scale_in(samples, after=4.0, floor=0) == 4.0
    assert time_to_scale_in(samples, after=4.0, floor=1) == 2.5
    assert time_to_scale_in(samples[:2], after=4.0, floor=0) is None


def test_toml_writer_round_trips_through_tomllib() -> None:
    doc = {
        "server": {"name": 'a "quoted" name', "server_timing": True},
        "pool": {"max_concurrency": 10, "target_concurrency": 7.5, "idle_ttl": "3s"},
        "backend": {
            "type": "process",
            "command": ["python", "-m", "x", "{port}"],
            "env": {"A B": "1"},
        },
    }
    assert tomllib.loads(configs.dumps(doc)) == doc
    merged = configs.merge(doc, {"pool": {"idle_ttl": "1s"}, "extra": {"k": 1}})
    assert merged["pool"] == {"max_concurrency": 10, "target_concurrency": 7.5, "idle_ttl": "1s"}
    assert merged["extra"] == {"k": 1} and doc["pool"]["idle_ttl"] == "3s"
    with pytest.raises(ValueError):
        configs.dumps({"x": math.nan})


def test_parse_wrk_summary() -> None:
    out = (
        "Running 3s test @ http://x/\n"
        'WRKJSON {"requests": 1000, "duration_us": 2000000, "p50_us": 1500, "p99_us": 9000, '
        '"mean_us": 1700.5, "err_connect": 0, "err_read": 1, "err_write": 0, '
        '"err_status": 9, "err_timeout": 0}\n'
    )
    r = parse_wrk(out, "wrk ...")
    assert (r.requests, r.errors, r.rps, r.p50_ms, r.p99_ms) == (1000, 10, 495.0, 1.5, 9.0)
    with pytest.raises(RuntimeError, match="no summary"):
        parse_wrk("unable to connect", "wrk ...")


def test_parse_instances_accepts_both_shapes() -> None:
    assert parse_instances([inst()]) == [inst()]
    assert parse_instances({"queued": 0, "instances": [inst(), "junk"]}) == [inst()]
    with pytest.raises(ValueError):
        parse_instances({"instances": 3})


def test_locust_series_rates_from_cumulative_counts() -> None:
    def row(ts: int, users: int, total: int, fails: int, p99: str) -> dict[str, str]:
        return {
            "Timestamp": str(ts),
            "User Count": str(users),
            "Total Request Count": str(total),
            "Total Failure Count": str(fails),
            "99%": p99,
        }

    run = LocustRun(
        "cmd", 0, {}, [row(100, 0, 0, 0, "N/A"), row(101, 5, 40, 2, "80"), row(103, 0, 40, 2, "80")]
    )
    s = run.series()
    assert [x["t"] for x in s] == [0, 1, 3]
    assert [x["rps"] for x in s] == [0, 40, 0]
    assert s[1]["fails_per_s"] == 2 and s[1]["p99_ms"] == 80
    assert math.isnan(s[2]["p99_ms"])  # locust's window value is stale once requests stop


def test_markdown_table() -> None:
    md = table_md(Table(["a", "b"], [[1234, 0.5], [math.nan, None]], "T"))
    assert md.splitlines() == [
        "*T*",
        "",
        "| a | b |",
        "|---|---|",
        "| 1,234 | 0.50 |",
        "| n/a | n/a |",
    ]


def test_text_table_aligns_columns_the_same_renderer_writes_markdown() -> None:
    text = render(["mode", "p50 ms", ""], [["fork", 1.234, "<- best"], ["exec", 123.4, ""]])
    assert text.splitlines() == [
        "mode  p50 ms",
        "fork  1.23    <- best",
        "exec  123",
    ]
    assert render(["x"], [[True]], indent="  ") == "  x\n  yes"


def test_tune_grid_resolves_percent_targets_and_dedups() -> None:
    args = parse_args(
        [
            "--max-concurrency",
            "4,10",
            "--target-concurrency",
            "50%,5",
            "--warm-pool",
            "0",
            "--idle-ttl",
            "1s",
            "--routing",
            "pack",
        ]
    )
    assert [(p.max_concurrency, p.target_concurrency) for p in grid(args)] == [
        (4, 2.0),
        (4, 4.0),
        (10, 5.0),
    ]


def m(mc: int, p99: float, inst_s: float, failures: int = 0, error: str = "") -> Measured:
    return Measured(Point(mc, mc * 0.7, 0, "2s"), 10, 100, failures, p99, inst_s, 3, error)


def test_tune_picks_cheapest_point_meeting_target() -> None:
    results = [m(4, 90, 30), m(10, 150, 12), m(20, 400, 5), m(30, 50, 1, failures=3)]
    best, met = pick(results, 200, 0.0)
    assert met and best is results[1]
    best, met = pick(results, 200, 0.05)  # now 3 % failures are tolerated
    assert met and best is results[3]


def test_tune_falls_back_to_best_p99_when_target_missed() -> None:
    results = [m(4, 900, 30), m(10, 300, 12), m(20, math.nan, 5, error="proxy died")]
    best, met = pick(results, 100, 0.0)
    assert not met and best is results[1]
    text = snippet(best, met, parse_args(["--p99", "100"]))
    assert "does NOT meet" in text
    assert tomllib.loads(text)["pool"]["max_concurrency"] == 10
    with pytest.raises(ValueError):
        pick([results[2]], 100, 0.0)


def test_tune_budget_plan() -> None:
    assert plan(100, 4) == (25 - OVERHEAD_S, 4)
    load_s, runnable = plan(30, 10)  # 3 s each would be too short to say anything
    assert load_s == MIN_RUN_S and runnable == int(30 // (MIN_RUN_S + OVERHEAD_S))
    assert plan(1, 3) == (MIN_RUN_S, 1)  # always try at least one point


def test_final_totals_from_locust_json(tmp_path: Path) -> None:
    entries = [
        {
            "name": "/",
            "method": "GET",
            "num_requests": 98,
            "num_failures": 1,
            "response_times": {str(ms): 1 for ms in range(1, 99)},
        },
        {
            "name": "/io",
            "method": "GET",
            "num_requests": 2,
            "num_failures": 0,
            "response_times": {"500": 2},
        },
    ]
    path = tmp_path / "x.json"
    path.write_text(json.dumps(entries))
    final = read_final(path)
    assert final["/"] == (98, 1, 98.0)
    assert final["Aggregated"] == (100, 1, 500.0)  # the slowest 2 % sit at 500 ms
    run = LocustRun("cmd", 0, {"Aggregated": {"Request Count": "7", "99%": "80"}}, final=final)
    assert run.count() == 100 and run.count("Failure Count") == 1 and run.p99_ms() == 500
    assert read_final(tmp_path / "missing.json") == {}
