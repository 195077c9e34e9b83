"""What the pool measures for the policy: how long starts take (the median of recent ones) and
how demand moved (peak per time bucket). Plain bookkeeping on the pool's clock."""

from __future__ import annotations

import statistics
from collections import deque

from forkproxy.proxy.policy import START_COST_PRIOR


class StartCost:
    """Seconds from asking for an instance to its READY: the median of the last WINDOW starts.
    A backend's starts can come in two kinds (a docker paused pool unpauses in ~20 ms until a
    burst empties it, then creates in ~1 s; a fork template hands over a prefork spare or
    forks): the median prices the next start by the kind most recent starts were, where a
    mean let one create among unpauses stretch the keep-alive of every instance twentyfold.
    A backend that slows as a whole (a busy engine) moves it within WINDOW / 2 starts."""

    WINDOW = 9

    def __init__(self, prior: float = START_COST_PRIOR) -> None:
        self.value = prior
        self._recent: deque[float] = deque(maxlen=self.WINDOW)

    def observe(self, seconds: float) -> None:
        self._recent.append(seconds)
        self.value = statistics.median(self._recent)

    def estimate(self, oldest_start_age: float) -> float:
        """A start running longer than the estimate already proves the estimate low."""
        return max(self.value, oldest_start_age)


class DemandTrace:
    """Per bucket of `width` seconds, for the last `span` seconds: peak requests in flight,
    requests refused for a full queue, requests finished.

    The pool asks for the peak over its keep-alive window on every decision (up to 10 min
    of 100 ms buckets), so peaks are also kept as a decreasing staircase: each bucket whose
    peak is above every later one's, oldest first. The peak over any window ending now is
    the first step inside the window; the staircase of real traffic is a few steps long,
    where scanning the window was thousands of buckets per decision."""

    def __init__(self, width: float, span: float) -> None:
        self.width = width
        self.span = span
        self._buckets: deque[list[float]] = deque()  # [start, peak, refused, finished]
        self._stairs: deque[tuple[float, float]] = deque()  # (start, peak), peaks falling

    def _current(self, now: float) -> list[float]:
        start = now - now % self.width
        if self._buckets and self._buckets[-1][0] == start:
            return self._buckets[-1]
        bucket = [start, 0.0, 0.0, 0.0]
        self._buckets.append(bucket)
        while self._buckets[0][0] < now - self.span:
            self._buckets.popleft()
        while self._stairs and self._stairs[0][0] < now - self.span:
            self._stairs.popleft()
        return bucket

    def record(self, now: float, demand: int) -> None:
        b = self._current(now)
        if demand <= b[1]:
            return
        b[1] = demand
        # this bucket now outranks every earlier step that is not above it
        while self._stairs and self._stairs[-1][1] <= demand:
            self._stairs.pop()
        self._stairs.append((b[0], demand))

    def refuse(self, now: float) -> None:
        self._current(now)[2] += 1

    def finish(self, now: float) -> None:
        self._current(now)[3] += 1

    def finishing(self, now: float, horizon: float = 1.0) -> float:
        """Requests finished per second over the last `horizon` seconds."""
        since = now - horizon
        n = 0.0
        for b in reversed(self._buckets):
            if b[0] < since:
                break
            n += b[3]
        return n / horizon

    def refused(self, now: float) -> int:
        """Refusals in the current and the previous bucket (the start they ask for is
        decided within a tick)."""
        since = now - now % self.width - self.width
        n = 0.0
        for b in reversed(self._buckets):
            if b[0] < since:
                break
            n += b[2]
        return int(n)

    def peak(self, now: float, window: float) -> float:
        since = now - window - self.width
        out = 0.0
        for start, value in reversed(self._stairs):
            if start < since:
                break
            out = value  # every older step inside the window is higher
        return out

    def growth(self, now: float, horizon: float = 1.0) -> float:
        """How fast the peak demand rose over the last `horizon` seconds (requests/s, >= 0):
        the peak of its second half against the peak of its first half."""
        half = horizon / 2
        recent = self.peak(now, half - self.width)
        before = 0.0
        for b in reversed(self._buckets):
            if b[0] >= now - half:
                continue
            if b[0] < now - horizon:
                break
            before = max(before, b[1])
        return max(0.0, recent - before) / half
