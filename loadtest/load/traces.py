"""Load traces for the elasticity benchmark: how many closed-loop users are active at each
moment. Pure and seeded (no download): step, spike, sine, and a bursty trace with
heavy-tailed idle gaps shaped like the Azure Functions characterisation (Shahrad et al.,
"Serverless in the Wild", USENIX ATC 2020: most invocations come in short bursts separated
by idle gaps whose lengths span orders of magnitude), compressed into seconds."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Trace:
    name: str
    times: tuple[float, ...]  # change points, ascending, times[0] == 0
    users: tuple[int, ...]  # users from times[i] until times[i + 1]
    duration: float  # load stops (users -> 0) here
    describe: str

    def users_at(self, t: float) -> int:
        if t < 0 or t >= self.duration:
            return 0
        return self.users[bisect.bisect_right(self.times, t) - 1]

    @property
    def peak(self) -> int:
        return max(self.users, default=0)


def _trace(name: str, points: list[tuple[float, int]], duration: float, describe: str) -> Trace:
    return Trace(name, tuple(t for t, _ in points), tuple(u for _, u in points), duration, describe)


def step(scale: float = 1.0, low: int = 4, high: int = 48) -> Trace:
    """The issue's anchor run: low users, a step to high, back to low."""
    a, b, c = 8 * scale, 14 * scale, 8 * scale
    return _trace(
        "step",
        [(0.0, low), (a, high), (a + b, low)],
        a + b + c,
        f"{low} users {a:.0f} s -> {high} users {b:.0f} s -> {low} users {c:.0f} s",
    )


def spike(scale: float = 1.0, high: int = 48) -> Trace:
    """Idle, then every user at once, then idle (the scale-from-zero case)."""
    a, b, c = 3 * scale, 8 * scale, 5 * scale
    return _trace(
        "spike",
        [(0.0, 0), (a, high), (a + b, 0)],
        a + b + c,
        f"0 users {a:.0f} s -> {high} users {b:.0f} s -> 0 users {c:.0f} s",
    )


def sine(scale: float = 1.0, low: int = 4, high: int = 48, step_s: float = 0.5) -> Trace:
    """A compressed day: one period from low up to high and back, in small steps."""
    period = 24 * scale
    n = int(period / step_s)
    points = []
    for i in range(n):
        phase = (1 - math.cos(2 * math.pi * i / n)) / 2
        points.append((i * step_s, round(low + (high - low) * phase)))
    return _trace("sine", points, period, f"{low}..{high} users, one {period:.0f} s period")


def bursty(seed: int = 11, scale: float = 1.0, peak: int = 48) -> Trace:
    """Bursts of users separated by idle gaps drawn from a heavy-tailed (lognormal) law:
    mostly short gaps, now and then a long one. Burst sizes are Pareto (mostly a few
    users, rarely many), burst lengths short. Seeded: the same trace on every run."""
    rng = random.Random(seed)
    duration = 30 * scale
    points: list[tuple[float, int]] = [(0.0, 0)]
    t = 0.5
    while t < duration - 1:
        size = min(peak, max(1, round(2 * rng.paretovariate(1.1))))
        length = min(3.0, 0.4 + rng.expovariate(1 / 0.8))
        points.append((t, size))
        t += length
        points.append((t, 0))
        t += min(8.0 * scale, rng.lognormvariate(math.log(0.6), 1.2))
    if len(points) > 2:  # the last burst is the peak: every trace reaches its peak
        i = max(range(1, len(points), 2), key=lambda j: points[j][0])
        points[i] = (points[i][0], peak)
    return _trace(
        "bursty",
        points,
        duration,
        f"seed {seed}: {len(points) // 2} bursts (Pareto sizes up to {peak} users), "
        f"lognormal idle gaps, {duration:.0f} s",
    )


def all_traces(scale: float) -> list[Trace]:
    return [step(scale), spike(scale), sine(scale), bursty(scale=scale)]
