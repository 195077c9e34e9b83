"""The client connection's phase table (phase.py): pure, so every pair is checked."""

from __future__ import annotations

import itertools

import pytest

from forkproxy.proxy.http.phase import (
    BROKEN,
    CLOSED,
    CLOSING,
    HEAD,
    HELD,
    LINGER,
    NEXT,
    OVERFLOW,
    TUNNEL,
    WAIT,
    Phase,
    step,
)

ENDING = (CLOSING, LINGER, CLOSED)
LIVE = tuple(p for p in Phase if p not in ENDING)


def test_every_phase_has_a_row() -> None:
    assert set(NEXT) == set(Phase)


def test_a_request_cycle_and_its_endings() -> None:
    # keep-alive: wait, a head arrives, it ends, wait again; then the client leaves
    phase = WAIT
    for wanted in (HEAD, WAIT, HEAD, WAIT, CLOSING, CLOSED):
        phase = step(phase, wanted)
        assert phase is wanted


def test_the_websocket_path() -> None:
    assert step(step(step(WAIT, HEAD), HELD), TUNNEL) is TUNNEL
    assert step(TUNNEL, CLOSING) is CLOSING
    with pytest.raises(RuntimeError, match="illegal phase move"):
        step(TUNNEL, HEAD)  # after the 101 nothing is parsed again
    with pytest.raises(RuntimeError, match="illegal phase move"):
        step(WAIT, TUNNEL)  # a tunnel only follows held bytes


@pytest.mark.parametrize("stopped", [OVERFLOW, BROKEN])
def test_stopped_reading_only_ends(stopped: Phase) -> None:
    assert step(HEAD, stopped) is stopped
    for wanted in LIVE:
        if wanted is not stopped:
            with pytest.raises(RuntimeError, match="illegal phase move"):
                step(stopped, wanted)
    for wanted in ENDING:
        assert step(stopped, wanted) is wanted


def test_every_live_phase_can_end() -> None:
    for phase, wanted in itertools.product(LIVE, ENDING):
        assert step(phase, wanted) is wanted


def test_closing_is_idempotent_and_never_goes_back() -> None:
    # close() or abort() after a lingering close or after the client left: the later stays
    for phase, wanted in itertools.product(ENDING, ENDING):
        after = step(phase, wanted)
        assert after is max(phase, wanted)
    for phase, wanted in itertools.product(ENDING, LIVE):
        with pytest.raises(RuntimeError, match="illegal phase move"):
            step(phase, wanted)


def test_staying_is_always_allowed() -> None:
    for phase in Phase:
        assert step(phase, phase) is phase


def test_the_table_is_exactly_this() -> None:
    # the whole relation, written out: a change to the table is a change to this test
    allowed = {(a, b) for a in Phase for b in Phase if a is not b and b in NEXT[a]}
    reading = {WAIT, HEAD, HELD, OVERFLOW, BROKEN}
    expected = {(a, b) for a in (WAIT, HEAD) for b in reading | set(ENDING) if a is not b}
    expected |= {(HELD, TUNNEL)}
    expected |= {(a, b) for a in (HELD, TUNNEL, OVERFLOW, BROKEN) for b in ENDING}
    expected |= {(CLOSING, LINGER), (CLOSING, CLOSED), (LINGER, CLOSED)}
    assert allowed == expected


def test_the_ending_phases_come_last() -> None:
    # the connection's `closing` is `phase >= CLOSING`
    assert [p for p in Phase if p >= CLOSING] == list(ENDING)
