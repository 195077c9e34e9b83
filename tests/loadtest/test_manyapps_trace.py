"""The many-apps trace generator: seeded, and heavy-tailed in the shape of the Azure
Functions characterisation (45 % of apps at most once an hour, 81 % at most once a minute,
a few hot and bursty ones)."""

from __future__ import annotations

import statistics

import pytest

from forkproxy.loadtest.load.manyapps_trace import (
    HOUR,
    MINUTE,
    class_counts,
    idle_firsts,
    make_trace,
)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    a, b = make_trace(100, 120, seed=7), make_trace(100, 120, seed=7)
    assert a == b
    assert make_trace(100, 120, seed=8) != a


@pytest.mark.parametrize("n", [100, 37, 1000])
def test_rate_classes_match_the_characterisation(n: int) -> None:
    trace = make_trace(n, 60, seed=1)
    rates = [a.rate for a in trace.apps]
    at_most_hourly = sum(r <= 1 / HOUR for r in rates) / n
    at_most_minutely = sum(r <= 1 / MINUTE for r in rates) / n
    assert abs(at_most_hourly - 0.45) <= 0.5 / n + 1e-9
    assert abs(at_most_minutely - 0.81) <= 1.0 / n + 1e-9
    hot = [a for a in trace.apps if a.rate_class == "hot"]
    assert 1 <= len(hot) <= max(1, round(0.03 * n))
    # heavy tail: the hottest few percent of apps send most of the requests
    per_app = [0] * n
    for _, i in trace.arrivals:
        per_app[i] += 1
    top = sorted(per_app, reverse=True)[: max(1, n // 20)]
    assert sum(top) > 0.5 * len(trace.arrivals)


def test_class_counts_add_up_and_keep_a_hot_app() -> None:
    for n in range(1, 150):
        c = class_counts(n)
        assert sum(c.values()) == n and min(c.values()) >= 0
        if n >= 4:
            assert c["hot"] >= 1
    assert class_counts(100) == {"rare": 45, "minute": 36, "warm": 16, "hot": 3}


def test_arrivals_are_sorted_in_range_and_follow_the_rates() -> None:
    trace = make_trace(100, 600, seed=24)
    times = [t for t, _ in trace.arrivals]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 600
    assert {i for _, i in trace.arrivals} <= set(range(100))
    # the expected count, within a wide margin (Poisson and bursty spells)
    expected = sum(a.rate for a in trace.apps) * 600
    assert 0.7 * expected < len(trace.arrivals) < 1.3 * expected
    kinds = {a.kind for a in trace.apps}
    assert kinds == {"aiohttp", "flask", "django"}
    assert len({a.host for a in trace.apps}) == 100


def test_hot_apps_are_bursty() -> None:
    """Per-second counts of a hot app vary more than a Poisson process's would
    (index of dispersion well above 1)."""
    trace = make_trace(100, 600, seed=24)
    hot = [i for i, a in enumerate(trace.apps) if a.rate_class == "hot"]
    for i in hot:
        per_s = [0] * 600
        for t, j in trace.arrivals:
            if j == i:
                per_s[int(t)] += 1
        assert statistics.variance(per_s) / statistics.mean(per_s) > 2.0


def test_idle_firsts() -> None:
    trace = make_trace(10, 300, seed=3)
    firsts = idle_firsts(trace, 60.0)
    seen: dict[int, float] = {}
    for k, (t, app) in enumerate(trace.arrivals):
        assert (k in firsts) == (app not in seen or t - seen[app] >= 60.0)
        seen[app] = t
    assert len(firsts) >= len(seen)  # every called app's first request at least


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_apps"):
        make_trace(0, 10)
    with pytest.raises(ValueError, match="duration"):
        make_trace(3, 0)
