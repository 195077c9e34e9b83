"""Locust LoadTestShape classes (step, spike, sine) driven by the pure profiles in profiles.py.

Parameters come from FORKPROXY_* environment variables (see loadtest/load/profiles.py); importing
this module imports locust, which monkey-patches the process with gevent: subprocesses only.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from forkproxy.loadtest.load.profiles import Profile, SineProfile, SpikeProfile, StepProfile, Tick


class _ProfileShape(LoadTestShape):
    abstract = True
    profile_cls: type[StepProfile] | type[SpikeProfile] | type[SineProfile]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # locust ships no annotations here
        # Read the environment when locust instantiates the shape, so each run sees its own env.
        self.profile: Profile = self.profile_cls.from_env(os.environ)

    def tick(self) -> Tick:
        return self.profile.at(self.get_run_time())  # type: ignore[no-untyped-call]


class StepShape(_ProfileShape):
    """FORKPROXY_STEP_USERS more users every FORKPROXY_STEP_SECONDS, FORKPROXY_STEP_COUNT times."""

    profile_cls = StepProfile


class SpikeShape(_ProfileShape):
    """Idle -> FORKPROXY_SPIKE_USERS at once -> idle (watch the proxy scale out and back in)."""

    profile_cls = SpikeProfile


class SineShape(_ProfileShape):
    """A compressed day between FORKPROXY_SINE_MIN and FORKPROXY_SINE_MAX users."""

    profile_cls = SineProfile


SHAPES: dict[str, type[_ProfileShape]] = {
    "step": StepShape,
    "spike": SpikeShape,
    "sine": SineShape,
}


def select(name: str | None) -> type[_ProfileShape] | None:
    """The shape class for FORKPROXY_SHAPE (None/""/"none": no shape, use -u/-r/-t)."""
    key = (name or "").strip().lower()
    if key in ("", "none"):
        return None
    try:
        return SHAPES[key]
    except KeyError:
        raise SystemExit(
            f"FORKPROXY_SHAPE={name!r}: choose one of none, {', '.join(SHAPES)}"
        ) from None
