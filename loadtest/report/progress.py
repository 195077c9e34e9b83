"""Live progress with an ETA for the long commands (`python -m loadtest bench`, `forkproxy tune`):
a rich bar on a terminal, one plain line per step anywhere else (CI logs, pipes).

The work is a list of steps with an expected duration each (a bench section, a tune grid point);
the ETA is what is left of the current step's expectation plus the later steps'. It moves every
refresh on a terminal, not only between steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from forkproxy.loadtest.report.livebar import LiveBar


def eta(expected: Sequence[float], current: int, elapsed_in_current: float) -> float:
    """Seconds left: the rest of step `current` (never below 0 when it overruns) plus every
    later step's expectation."""
    if current >= len(expected):
        return 0.0
    return max(expected[current] - elapsed_in_current, 0.0) + sum(expected[current + 1 :])


def clock_text(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Use as a context manager; call start(i, label) as step i begins.

    `unit` names the steps in the plain lines ("3/5 sections, ..."); `stream` is where progress
    goes (stderr: stdout keeps the results); `live` forces the terminal bar on or off."""

    def __init__(
        self,
        title: str,
        expected: Sequence[float],
        *,
        unit: str = "steps",
        stream: IO[str] | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.title = title
        self.expected = list(expected)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.clock = clock
        self.t0 = clock()
        self.current = 0
        self.step_t0 = self.t0
        self.label = "starting"
        self._bar: LiveBar | None = None

    def __enter__(self) -> Progress:
        if self.live:
            from forkproxy.loadtest.report.livebar import LiveBar  # rich: only on a terminal

            self._bar = LiveBar(self)
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.current = len(self.expected)
        self.label = "done" if exc is None else f"stopped: {exc_type.__name__ if exc_type else ''}"
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line()

    def start(self, index: int, label: str) -> None:
        self.current, self.label, self.step_t0 = index, label, self.clock()
        if self._bar is None:
            self._line()

    def spent(self) -> float:
        return self.clock() - self.t0

    def remaining(self) -> float:
        return eta(self.expected, self.current, self.clock() - self.step_t0)

    def done_fraction(self) -> float:
        total = sum(self.expected) or 1.0
        return max(0.0, min(1.0, 1.0 - self.remaining() / total))

    def _line(self) -> None:
        n = len(self.expected)
        text = (
            f"[{self.title}] {min(self.current, n)}/{n} {self.unit}, "
            f"{clock_text(self.spent())} elapsed, ETA {clock_text(self.remaining())}: {self.label}"
        )
        print(text, file=self.stream, flush=True)
