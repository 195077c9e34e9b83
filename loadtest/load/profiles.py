"""Load profiles as pure functions of time: how many users at second t, and how fast to get there.

No locust import here (locust monkey-patches the process with gevent), so tests and the
bench can reason about the shapes; `loadtest/load/shapes.py` wraps these as LoadTestShape classes.

Every profile fits itself into FORKPROXY_SHAPE_SECONDS (default 60) unless its own
phase variables are set:

  step   FORKPROXY_STEP_USERS (10 users added per step), FORKPROXY_STEP_COUNT (5 steps),
         FORKPROXY_STEP_SECONDS (length of a step; default SHAPE_SECONDS / STEP_COUNT)
  spike  FORKPROXY_SPIKE_USERS (50 at the peak), FORKPROXY_SPIKE_BASE_USERS (0 while idle),
         FORKPROXY_SPIKE_IDLE / _BURST / _AFTER (seconds idle before, at the peak, idle after;
         default 25% / 25% / 50% of SHAPE_SECONDS: the long tail lets the proxy scale back)
  sine   FORKPROXY_SINE_MIN (1, "night"), FORKPROXY_SINE_MAX (20, "noon"),
         FORKPROXY_SINE_PERIOD (one "day"; default SHAPE_SECONDS / CYCLES),
         FORKPROXY_SINE_CYCLES (1)
  all    FORKPROXY_SPAWN_RATE (users started/stopped per second; default 100, i.e. near-instant)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

Tick = tuple[int, float] | None  # (users, spawn_rate); None ends the test

DEFAULT_SECONDS = 60.0
DEFAULT_SPAWN_RATE = 100.0


def _num(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r}: expected a number") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{key}={raw!r}: expected a finite number >= 0")
    return value


def _common(env: Mapping[str, str]) -> tuple[float, float]:
    total = _num(env, "FORKPROXY_SHAPE_SECONDS", DEFAULT_SECONDS)
    rate = _num(env, "FORKPROXY_SPAWN_RATE", DEFAULT_SPAWN_RATE)
    if total <= 0 or rate <= 0:
        raise ValueError("FORKPROXY_SHAPE_SECONDS and FORKPROXY_SPAWN_RATE must be > 0")
    return total, rate


@dataclass(frozen=True)
class StepProfile:
    """Staircase: `users` more every `seconds`, `count` times, then stop."""

    users: int = 10
    count: int = 5
    seconds: float = 12.0
    spawn_rate: float = DEFAULT_SPAWN_RATE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StepProfile:
        total, rate = _common(env)
        count = max(1, int(_num(env, "FORKPROXY_STEP_COUNT", 5)))
        return cls(
            users=int(_num(env, "FORKPROXY_STEP_USERS", 10)),
            count=count,
            seconds=_num(env, "FORKPROXY_STEP_SECONDS", total / count) or total / count,
            spawn_rate=rate,
        )

    @property
    def duration(self) -> float:
        return self.count * self.seconds

    def at(self, t: float) -> Tick:
        if t >= self.duration:
            return None
        return (self.users * (int(t // self.seconds) + 1), self.spawn_rate)


@dataclass(frozen=True)
class SpikeProfile:
    """Idle, then a sudden burst of `users`, then idle again long enough to watch scale-in."""

    users: int = 50
    base_users: int = 0
    idle: float = 15.0
    burst: float = 15.0
    after: float = 30.0
    spawn_rate: float = DEFAULT_SPAWN_RATE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SpikeProfile:
        total, rate = _common(env)
        return cls(
            users=int(_num(env, "FORKPROXY_SPIKE_USERS", 50)),
            base_users=int(_num(env, "FORKPROXY_SPIKE_BASE_USERS", 0)),
            idle=_num(env, "FORKPROXY_SPIKE_IDLE", total * 0.25),
            burst=_num(env, "FORKPROXY_SPIKE_BURST", total * 0.25),
            after=_num(env, "FORKPROXY_SPIKE_AFTER", total * 0.5),
            spawn_rate=rate,
        )

    @property
    def duration(self) -> float:
        return self.idle + self.burst + self.after

    @property
    def burst_window(self) -> tuple[float, float]:
        return (self.idle, self.idle + self.burst)

    def at(self, t: float) -> Tick:
        if t >= self.duration:
            return None
        start, end = self.burst_window
        return (self.users if start <= t < end else self.base_users, self.spawn_rate)


@dataclass(frozen=True)
class SineProfile:
    """A compressed day: users follow a raised cosine from `low` (night) to `high` (noon)."""

    low: int = 1
    high: int = 20
    period: float = 60.0
    cycles: int = 1
    spawn_rate: float = DEFAULT_SPAWN_RATE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SineProfile:
        total, rate = _common(env)
        cycles = max(1, int(_num(env, "FORKPROXY_SINE_CYCLES", 1)))
        return cls(
            low=int(_num(env, "FORKPROXY_SINE_MIN", 1)),
            high=int(_num(env, "FORKPROXY_SINE_MAX", 20)),
            period=_num(env, "FORKPROXY_SINE_PERIOD", total / cycles) or total / cycles,
            cycles=cycles,
            spawn_rate=rate,
        )

    @property
    def duration(self) -> float:
        return self.period * self.cycles

    def at(self, t: float) -> Tick:
        if t >= self.duration:
            return None
        phase = (1 - math.cos(2 * math.pi * t / self.period)) / 2  # 0 at night, 1 at noon
        return (round(self.low + (self.high - self.low) * phase), self.spawn_rate)


Profile = StepProfile | SpikeProfile | SineProfile

PROFILES: dict[str, type[StepProfile] | type[SpikeProfile] | type[SineProfile]] = {
    "step": StepProfile,
    "spike": SpikeProfile,
    "sine": SineProfile,
}


def profile_from_env(name: str, env: Mapping[str, str]) -> Profile:
    try:
        cls = PROFILES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(PROFILES)}") from None
    return cls.from_env(env)
