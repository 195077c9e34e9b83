"""What the pool measures for the policy, on explicit times: start cost, demand peaks,
growth, refusals and the rate requests finish."""

from __future__ import annotations

import random

from forkproxy.proxy.demand import DemandTrace, StartCost
from forkproxy.proxy.policy import START_COST_PRIOR


def test_start_cost_starts_at_the_prior_then_follows_starts() -> None:
    c = StartCost()
    assert c.value == START_COST_PRIOR
    c.observe(0.010)
    assert c.value == 0.010  # the first measurement replaces the prior
    for _ in range(3):
        c.observe(0.020)
    c.observe(1.8)  # a docker create among unpauses (the paused pool ran dry once)
    assert c.value == 0.020  # prices the next start by the kind most starts were
    # a start already running longer than the estimate raises it
    assert c.estimate(0.5) == 0.5 and c.estimate(0.001) == c.value


def test_start_cost_follows_a_backend_that_slowed_as_a_whole() -> None:
    c = StartCost()
    for _ in range(StartCost.WINDOW):
        c.observe(0.02)
    for _ in range(StartCost.WINDOW // 2):
        c.observe(0.3)
    assert c.value == 0.02
    c.observe(0.3)  # now most of the window: the estimate moves
    assert c.value == 0.3


def test_peak_covers_the_window_and_forgets_older_buckets() -> None:
    d = DemandTrace(width=0.25, span=10.0)
    d.record(100.0, 20)
    d.record(100.1, 5)
    d.record(101.0, 3)
    assert d.peak(101.0, 0.5) == 3
    assert d.peak(101.0, 1.0) == 20
    d.record(120.0, 1)  # far later: the old buckets are dropped
    assert d.peak(120.0, 600.0) == 1


def test_peak_over_any_window_matches_a_scan_of_the_buckets() -> None:
    rng = random.Random(7)
    d = DemandTrace(width=0.1, span=30.0)
    recorded: list[tuple[float, int]] = []
    now = 100.0
    for _ in range(3000):
        now += rng.uniform(0.0, 0.05)
        demand = rng.randint(0, 40)
        d.record(now, demand)
        recorded.append((now - now % 0.1, demand))
        if rng.random() < 0.1:
            window = rng.choice([0.2, 0.5, 1.0, 5.0, 600.0])
            since = max(now - window - 0.1, now - 30.0)
            want = max((v for t, v in recorded if t >= since), default=0)
            assert d.peak(now, window) == want, (now, window)


def test_growth_compares_the_halves_of_the_horizon() -> None:
    d = DemandTrace(width=0.25, span=10.0)
    for i in range(4):
        d.record(100.0 + i * 0.25, 4)  # flat at 4 for a second
    d.record(101.0, 4)
    assert d.growth(101.0) == 0.0
    d.record(101.3, 24)  # +20 within the last half second
    d.record(101.5, 24)
    assert d.growth(101.5) == 40.0  # (24 - 4) / 0.5 s
    d.record(102.5, 2)
    assert d.growth(102.5) == 0.0  # falling load never counts as growth


def test_refusals_and_finishing_rate() -> None:
    d = DemandTrace(width=0.25, span=10.0)
    d.refuse(100.0)
    d.refuse(100.3)
    assert d.refused(100.3) == 2
    assert d.refused(101.0) == 0  # older than the previous bucket
    for i in range(30):
        d.finish(101.0 + i * 0.03)
    assert d.finishing(101.9) == 30.0
