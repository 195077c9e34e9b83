"""Pure arithmetic for benchmark results: percentiles, instance-seconds and their lower bound.

Instance samples are (t_seconds, [instance dicts as served by the admin /instances]).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Sample = tuple[float, list[Mapping[str, Any]]]

# States that hold resources (a stopped or failed instance costs nothing any more).
LIVE_STATES = frozenset({"starting", "ready", "draining", "busy", "idle"})


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def state_of(inst: Mapping[str, Any]) -> str:
    return str(inst.get("state", "")).lower()


def live(instances: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [i for i in instances if state_of(i) in LIVE_STATES]


def in_flight(instances: Iterable[Mapping[str, Any]]) -> int:
    return sum(int(i.get("in_flight", 0) or 0) for i in instances)


def instance_seconds(samples: Sequence[Sample]) -> float:
    """Live instances integrated over time (each sample holds until the next one)."""
    total = 0.0
    for (t0, insts), (t1, _) in itertools.pairwise(samples):
        total += len(live(insts)) * (t1 - t0)
    return total


def instance_seconds_lower_bound(samples: Sequence[Sample], max_concurrency: int) -> float:
    """Per whole second: ceil(mean in-flight / max_concurrency), summed.

    The fewest instances that could have carried the observed load without queueing, had
    they appeared exactly when needed and vanished at once: no real autoscaler beats it.
    """
    if max_concurrency <= 0:
        raise ValueError("max_concurrency must be > 0")
    buckets: dict[int, list[int]] = {}
    for t, insts in samples:
        buckets.setdefault(int(t), []).append(in_flight(insts))
    return float(sum(math.ceil((sum(v) / len(v)) / max_concurrency) for v in buckets.values() if v))


def time_to_scale_in(samples: Sequence[Sample], after: float, floor: int) -> float | None:
    """Seconds from `after` until the live count first drops to <= floor (None: never seen)."""
    for t, insts in samples:
        if t >= after and len(live(insts)) <= floor:
            return t - after
    return None


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def memory_seconds(samples: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Memory held x time over [start, end]: each (t, value) sample holds until the next
    one (the last until `end`); before the first sample nothing is counted (unknown)."""
    if end <= start:
        return 0.0
    total = 0.0
    ordered = sorted(samples)
    for i, (t, v) in enumerate(ordered):
        t_next = ordered[i + 1][0] if i + 1 < len(ordered) else end
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += v * (hi - lo)
    return total
