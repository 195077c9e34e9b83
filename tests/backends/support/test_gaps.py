"""An app's idle gaps and the keep-alive window they justify: pure bookkeeping."""

from __future__ import annotations

import pytest

from forkproxy.backends.support.gaps import (
    GAP_MARGIN,
    GAP_MIN_SAMPLES,
    LEARNED_STARTS,
    GapLog,
)


def log_of(gaps: list[float]) -> GapLog:
    log = GapLog()
    t = 0.0
    for g in gaps:
        log.idle(t)
        t += g
        log.arrival(t)
        t += 0.01  # the request's own time
    return log


def test_a_gap_runs_from_going_idle_to_the_next_arrival() -> None:
    log = GapLog()
    log.arrival(1.0)  # never idle before: no gap
    log.idle(2.0)
    log.idle(3.0)  # still idle since 2.0
    log.arrival(5.5)
    log.arrival(6.0)  # busy again, no gap
    assert len(log) == 1
    log.idle(7.0)
    log.arrival(6.5)  # a clock step back counts as no gap, not a negative one
    assert len(log) == 2


def test_nothing_is_learned_from_too_few_gaps() -> None:
    log = log_of([1.0] * (GAP_MIN_SAMPLES - 1))
    assert log.quantile() is None and log.window(1.0, 600.0) == 0.0
    log = log_of([1.0] * GAP_MIN_SAMPLES)
    assert log.quantile() == 1.0


def test_the_window_covers_the_tail_of_the_gaps_with_a_margin() -> None:
    # 99 short gaps and one long: the 99th percentile is the longest short one
    log = log_of([0.1 * (k % 10 + 1) for k in range(99)] + [30.0])
    assert log.quantile() == 1.0
    assert log.window(0.02, 600.0) == GAP_MARGIN * 1.0
    # a new gap is taken into account at once
    log.idle(1000.0)
    log.arrival(1001.5)
    assert log.quantile() == 1.5


def test_the_window_is_not_taken_when_it_costs_too_many_climbs() -> None:
    log = log_of([10.0] * 20)  # an app called every ~10 s: a 20 s window
    assert LEARNED_STARTS == 500.0
    assert log.window(climb=0.041, ceiling=600.0) == pytest.approx(20.0)  # 20.5 s of climbs
    assert log.window(climb=0.039, ceiling=600.0) == 0.0  # 19.5 s of climbs: not worth it
    assert log.window(climb=1.0, ceiling=15.0) == 0.0  # over the ceiling


def test_only_the_last_samples_are_kept() -> None:
    log = GapLog(samples=10)
    t = 0.0
    for g in [50.0] * 10 + [1.0] * 10:  # the app got busier: the old gaps are forgotten
        log.idle(t)
        t += g
        log.arrival(t)
    assert len(log) == 10 and log.quantile() == 1.0


def test_a_new_generation_carries_the_gaps_not_the_idle_clock() -> None:
    log = log_of([1.0] * 10)
    log.idle(500.0)  # the old generation went idle
    new = log.carried()
    assert new is not log and len(new) == 10 and new.quantile() == pytest.approx(1.0)
    new.arrival(900.0)  # the old generation's idle time is no gap of the new one
    assert len(new) == 10
    log.arrival(501.0)  # and the old one goes on alone
    assert (len(log), len(new)) == (11, 10)
