"""The elasticity section's pure parts: the traces, and the arithmetic on samples
(instance-seconds vs the per-tick lower bound, time back to min_instances)."""

from __future__ import annotations

import itertools

from forkproxy.loadtest.load.traces import all_traces, bursty, spike, step
from forkproxy.loadtest.sections.elasticity import back_to_min, integrate


def test_traces_follow_their_shape_and_stop_at_the_end() -> None:
    s = step(1.0)
    assert (s.users_at(0), s.users_at(10), s.users_at(25), s.users_at(s.duration)) == (4, 48, 4, 0)
    sp = spike(0.5)
    assert sp.users_at(0.5) == 0 and sp.users_at(2.0) == 48 and sp.peak == 48
    for t in all_traces(0.3):
        assert t.times[0] == 0.0 and list(t.times) == sorted(t.times)
        assert t.peak == 48 and t.users_at(-1) == 0 and t.users_at(t.duration + 1) == 0


def test_bursty_is_seeded_heavy_tailed_and_reaches_its_peak() -> None:
    a, b = bursty(seed=3), bursty(seed=3)
    assert a == b and bursty(seed=4) != a  # generated, reproducible, no download
    sizes = [u for u in a.users if u]
    assert max(sizes) == 48 and min(sizes) < 8  # mostly small bursts, one at the peak
    spans = itertools.pairwise(a.times)
    gaps = [t1 - t0 for (t0, t1), u in zip(spans, a.users, strict=False) if u == 0]
    assert max(gaps) > 2 * min(gaps)  # idle gaps of very different lengths


def _inst(n: int, in_flight: int) -> list[dict[str, object]]:
    per = [in_flight // n + (1 if i < in_flight % n else 0) for i in range(n)]
    return [{"state": "ready", "in_flight": k} for k in per]


def test_integrate_counts_live_instances_against_ceil_in_flight_per_tick() -> None:
    samples = [(0.0, _inst(3, 5)), (0.25, _inst(3, 12)), (0.5, _inst(1, 0)), (0.75, [])]
    spares = [2, 1, 0, 2]
    used, bound, spare_s = integrate(samples, spares, until=10.0)
    # 3 + 3 + 1 instances for 0.25 s each; bound ceil(5/4)=2, ceil(12/4)=3, 0
    assert used == 7 * 0.25 and bound == 5 * 0.25
    assert spare_s == 3 * 0.25  # each sample's spares hold until the next sample
    used, _, spare_s = integrate(samples, spares, until=0.25)
    assert used == 3 * 0.25 and spare_s == 2 * 0.25


def test_back_to_min_is_measured_from_the_end_of_the_load() -> None:
    samples = [(0.0, _inst(3, 3)), (1.0, _inst(2, 0)), (1.5, _inst(1, 0)), (2.0, [])]
    assert back_to_min(samples, since=0.8, floor=0) == 1.2
    assert back_to_min(samples, since=0.8, floor=1) == 0.7
    assert back_to_min(samples[:3], since=0.8, floor=0) is None
