"""The load profiles produce the intended user counts over time (pure, no locust)."""

from __future__ import annotations

import pytest

from forkproxy.loadtest.load.profiles import (
    SineProfile,
    SpikeProfile,
    StepProfile,
    profile_from_env,
)


def users(profile: StepProfile | SpikeProfile | SineProfile, t: float) -> int | None:
    tick = profile.at(t)
    return None if tick is None else tick[0]


def test_step_climbs_then_stops() -> None:
    p = StepProfile(users=10, count=3, seconds=5)
    assert [users(p, t) for t in (0, 4.9, 5, 10, 14.9)] == [10, 10, 20, 30, 30]
    assert users(p, 15) is None


def test_spike_is_idle_burst_idle() -> None:
    p = SpikeProfile(users=50, base_users=0, idle=2, burst=3, after=4)
    assert [users(p, t) for t in (0, 1.9, 2, 4.9, 5, 8.9)] == [0, 0, 50, 50, 0, 0]
    assert users(p, 9) is None
    assert p.burst_window == (2, 5)


def test_sine_goes_from_night_to_noon_and_back() -> None:
    p = SineProfile(low=2, high=22, period=40, cycles=2)
    assert users(p, 0) == 2
    assert users(p, 20) == 22
    assert users(p, 10) == 12
    assert users(p, 40) == 2
    assert users(p, 60) == 22
    assert users(p, 80) is None
    assert all(2 <= (users(p, t / 10) or 0) <= 22 for t in range(800))


def test_profiles_fit_into_shape_seconds() -> None:
    env = {"FORKPROXY_SHAPE_SECONDS": "20"}
    for name in ("step", "spike", "sine"):
        assert profile_from_env(name, env).duration == pytest.approx(20)


def test_env_overrides_phases_and_rate() -> None:
    env = {
        "FORKPROXY_SPIKE_USERS": "7",
        "FORKPROXY_SPIKE_IDLE": "1",
        "FORKPROXY_SPIKE_BURST": "2",
        "FORKPROXY_SPIKE_AFTER": "3",
        "FORKPROXY_SPAWN_RATE": "5",
    }
    p = profile_from_env("spike", env)
    assert p.at(1.5) == (7, 5.0)
    assert p.duration == 6


@pytest.mark.parametrize(
    ("name", "env", "message"),
    [
        ("wave", {}, "unknown shape"),
        ("step", {"FORKPROXY_STEP_USERS": "lots"}, "expected a number"),
        ("sine", {"FORKPROXY_SINE_MAX": "-3"}, ">= 0"),
        ("spike", {"FORKPROXY_SHAPE_SECONDS": "0"}, "must be > 0"),
    ],
)
def test_bad_settings_are_reported(name: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        profile_from_env(name, env)
