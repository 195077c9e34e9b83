"""The many-apps trace: N apps, each with a request rate drawn heavy-tailed like the Azure
Functions characterisation (Shahrad et al., "Serverless in the Wild", USENIX ATC 2020,
Fig. 5): 45 % of apps are invoked at most once an hour on average, 81 % at most once a
minute, and a few apps take most of the requests, in bursts. Pure and seeded (no
download): the same trace on every run, and its arrivals are open-loop (they do not
wait for answers).

Rate classes, each rate log-uniform inside its class:

- rare:   1/day .. 1/hour        (45 % of apps)
- minute: 1/hour .. 1/minute     (36 %: up to 81 %)
- warm:   1/minute .. WARM_MAX   (the rest but the hot ones)
- hot:    HOT_MIN .. HOT_MAX, bursty: their rate switches between a quiet and a busy
          level every few seconds (a Markov-modulated Poisson process)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

HOUR = 3600.0
MINUTE = 60.0
DAY = 86400.0

RARE_SHARE = 0.45  # at most once an hour
MINUTE_SHARE = 0.81 - RARE_SHARE  # at most once a minute (cumulative 81 %)
HOT_SHARE = 0.03  # "a few hot and bursty"
WARM_MAX = 1.0  # req/s at the top of the warm class
HOT_MIN, HOT_MAX = 3.0, 8.0  # mean req/s of a hot app (2 shared cores carry the sum)
BURST_MEAN_S = 6.0  # mean length of a hot app's quiet or busy spell
BUSY_FACTOR, QUIET_FACTOR = 2.5, 0.25  # x the app's mean rate; 2.5 p + 0.25 (1-p) = 1, p=1/3
BUSY_P = (1 - QUIET_FACTOR) / (BUSY_FACTOR - QUIET_FACTOR)

CLASSES = ("rare", "minute", "warm", "hot")
KINDS = ("aiohttp", "flask", "django")


@dataclass(frozen=True)
class AppSpec:
    name: str
    kind: str  # one of KINDS: which template the app is generated from
    rate: float  # mean requests per second
    rate_class: str  # one of CLASSES

    @property
    def host(self) -> str:
        return f"{self.name}.apps.test"


@dataclass(frozen=True)
class ManyAppsTrace:
    apps: tuple[AppSpec, ...]
    arrivals: tuple[tuple[float, int], ...]  # (seconds from start, index into apps), ascending
    duration: float
    seed: int

    def by_class(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {c: [] for c in CLASSES}
        for i, a in enumerate(self.apps):
            out[a.rate_class].append(i)
        return out


def class_counts(n_apps: int) -> dict[str, int]:
    """How many apps each class gets: the shares rounded, at least one hot app when n >= 4,
    so that small runs still have a hot app to measure."""
    rare = round(n_apps * RARE_SHARE)
    minute = round(n_apps * (RARE_SHARE + MINUTE_SHARE)) - rare
    hot = max(1 if n_apps >= 4 else 0, round(n_apps * HOT_SHARE))
    warm = max(0, n_apps - rare - minute - hot)
    return {"rare": rare, "minute": minute, "warm": warm, "hot": n_apps - rare - minute - warm}


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


_BOUNDS = {
    "rare": (1 / DAY, 1 / HOUR),
    "minute": (1 / HOUR, 1 / MINUTE),
    "warm": (1 / MINUTE, WARM_MAX),
    "hot": (HOT_MIN, HOT_MAX),
}


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    out: list[float] = []
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return out
        out.append(t)


def _bursty(rng: random.Random, rate: float, duration: float) -> list[float]:
    """Spells of busy (BUSY_FACTOR x rate) and quiet (QUIET_FACTOR x rate) arrivals,
    exponential spell lengths: the mean rate stays `rate`."""
    out: list[float] = []
    t = 0.0
    while t < duration:
        spell = rng.expovariate(1 / BURST_MEAN_S)
        factor = BUSY_FACTOR if rng.random() < BUSY_P else QUIET_FACTOR
        out += _poisson(rng, rate * factor, t, min(duration, t + spell))
        t += spell
    return out


def make_trace(
    n_apps: int, duration: float, seed: int = 24, kinds: Sequence[str] = KINDS
) -> ManyAppsTrace:
    """`n_apps` apps (kinds cycled over the templates, shuffled) and their arrivals over
    `duration` seconds. Rare apps mostly get no request at all in a short run: that is
    the point (an always-on instance holds memory for them all the same)."""
    if n_apps < 1:
        raise ValueError("n_apps must be >= 1")
    if duration <= 0:
        raise ValueError("duration must be > 0")
    rng = random.Random(seed)
    counts = class_counts(n_apps)
    classes = [c for c in CLASSES for _ in range(counts[c])]
    rng.shuffle(classes)
    apps = tuple(
        AppSpec(
            name=f"app{i:03d}",
            kind=kinds[i % len(kinds)],
            rate=_log_uniform(rng, *_BOUNDS[c]),
            rate_class=c,
        )
        for i, c in enumerate(classes)
    )
    arrivals: list[tuple[float, int]] = []
    for i, a in enumerate(apps):
        times = _bursty(rng, a.rate, duration) if a.rate_class == "hot" else None
        if times is None:
            times = _poisson(rng, a.rate, 0.0, duration)
        arrivals += [(round(t, 4), i) for t in times]
    arrivals.sort()
    return ManyAppsTrace(apps, tuple(arrivals), duration, seed)


def idle_firsts(trace: ManyAppsTrace, idle_s: float) -> set[int]:
    """Indexes into trace.arrivals of the requests that reach an app idle for `idle_s` or
    more (its first request of the run counts: nothing came before it)."""
    last: dict[int, float] = {}
    out = set()
    for k, (t, app) in enumerate(trace.arrivals):
        prev = last.get(app)
        if prev is None or t - prev >= idle_s:
            out.add(k)
        last[app] = t
    return out
