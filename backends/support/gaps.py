"""An app's idle gaps, learned: how long it goes without a request once its last one
finished, and the keep-alive window they justify (issue 24).

A keep-alive priced by one start alone (the ski rental of proxy/policy.py: ~20 starts)
is the right price for an app whose next request could come at any time, and the wrong
one for an app called steadily with pauses: a bursty app whose quiet spells have a
request every second or two lost its fork after 0.4 s and paid a start on one request in
fifteen. Serverless platforms that face many apps learn each app's idle times instead
(Shahrad et al., "Serverless in the Wild", USENIX ATC 2020: keep an app for the 99th
percentile of its idle-time histogram). Here: the window is GAP_MARGIN x the GAP_QUANTILE
of the app's last GAP_SAMPLES gaps, and it is taken only while it costs at most
LEARNED_STARTS climbs back (a rung that takes 20 ms to rebuild is held at most 10 s, a
template that takes 0.2 s at most 100 s). An app whose gaps are longer than that is
called too rarely for holding the rung to pay, and keeps the plain ski-rental price.

The pool records the gaps (it sees requests arrive and finish); the backend reads them
through its BackendContext for the rungs it owns (the fork template)."""

from __future__ import annotations

import math
from collections import deque

GAP_SAMPLES = 512  # the last this many idle gaps: hours of a rare app, minutes of a hot one
GAP_MIN_SAMPLES = 8  # fewer gaps than this teach nothing yet
GAP_QUANTILE = 0.99
GAP_MARGIN = 2.0  # the quantile of a few hundred samples underestimates the tail
LEARNED_STARTS = 500.0  # a learned window costs at most this many climbs back


class GapLog:
    """Idle gaps of one app: from the moment its last request finished (nothing in flight,
    nothing queued) to the next request's arrival."""

    def __init__(self, samples: int = GAP_SAMPLES) -> None:
        self._gaps: deque[float] = deque(maxlen=samples)
        self._idle_since: float | None = None
        self._quantile: float | None = None
        self._stale = False

    def idle(self, now: float) -> None:
        """Nothing in flight or queued from `now` (a later call while idle changes nothing)."""
        if self._idle_since is None:
            self._idle_since = now

    def arrival(self, now: float) -> None:
        """A request arrived: it ends the gap, if the app was idle."""
        if self._idle_since is not None:
            self._gaps.append(max(0.0, now - self._idle_since))
            self._idle_since = None
            self._stale = True

    def carried(self) -> GapLog:
        """The gaps, for a new generation of the same app (a reload changes its code, not
        its traffic). The idle clock stays behind: the old generation's last requests
        end on their own, and their end is no idle time of the new one."""
        new = GapLog(self._gaps.maxlen or GAP_SAMPLES)
        new._gaps.extend(self._gaps)
        return new

    def __len__(self) -> int:
        return len(self._gaps)

    def quantile(self) -> float | None:
        """GAP_QUANTILE of the recorded gaps; None until GAP_MIN_SAMPLES are in. Sorted
        again only after a new gap (the pool asks every tick)."""
        if len(self._gaps) < GAP_MIN_SAMPLES:
            return None
        if self._stale or self._quantile is None:
            ordered = sorted(self._gaps)
            self._quantile = ordered[math.ceil(GAP_QUANTILE * len(ordered)) - 1]
            self._stale = False
        return self._quantile

    def window(self, climb: float, ceiling: float) -> float:
        """Seconds to hold a rung that costs `climb` seconds to rebuild through this app's
        gaps: 0.0 (nothing learned) until enough gaps are in, or when covering them would
        take longer than LEARNED_STARTS climbs or `ceiling`."""
        q = self.quantile()
        if q is None:
            return 0.0
        wanted = GAP_MARGIN * q
        return wanted if wanted <= min(ceiling, LEARNED_STARTS * climb) else 0.0
