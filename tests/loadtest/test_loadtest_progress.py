"""Progress with an ETA: the arithmetic, the plain lines CI logs get, and the rich bar."""

from __future__ import annotations

import io

from forkproxy.loadtest.report.progress import Progress, clock_text, eta


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_eta_counts_the_rest_of_the_current_step_and_every_later_one() -> None:
    assert eta([10, 20, 30], 0, 4) == 6 + 20 + 30
    assert eta([10, 20, 30], 1, 25) == 30  # an overrunning step adds nothing, never negative
    assert eta([10, 20, 30], 3, 0) == 0
    assert clock_text(59.6) == "1m00s" and clock_text(125) == "2m05s" and clock_text(3) == "3s"


def test_plain_lines_when_not_a_terminal() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress("tune", [10, 10], unit="points", stream=out, clock=clock) as p:
        p.start(0, "running a")
        clock.now += 12
        p.start(1, "running b")
        clock.now += 3
    assert out.getvalue().splitlines() == [
        "[tune] 0/2 points, 0s elapsed, ETA 20s: running a",
        "[tune] 1/2 points, 12s elapsed, ETA 10s: running b",
        "[tune] 2/2 points, 15s elapsed, ETA 0s: done",
    ]


def test_live_bar_renders_step_and_eta() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress("bench", [60, 30], unit="sections", stream=out, live=True, clock=clock) as p:
        p.start(0, "datapath")
        clock.now += 15
        assert p.remaining() == 75 and abs(p.done_fraction() - 15 / 90) < 1e-9
        assert p._bar is not None
        p._bar.refresh()
    text = out.getvalue()
    assert "bench" in text and "ETA" in text and "sections" in text
