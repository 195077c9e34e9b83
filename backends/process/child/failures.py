"""The fork template's account of its children's crashes. A fork that fails the same way
as the one before (a post_fork that raises, an on_startup that cannot connect) would
otherwise print one traceback per fork, as fast as the pool retries: the first is shown
in full, the repeats are counted in one line at most every REPEAT_EVERY seconds."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

REPEAT_EVERY = 10.0
MAX_REPORT = 16 * 1024  # bytes of a crash's traceback text a child reports (its tail)
_KEPT = 32  # distinct failures remembered
# what differs between two forks failing the same way: addresses, pids, ports
_NOISE = re.compile(r"0x[0-9a-fA-F]+|\b\d+\b")


@dataclass
class _Seen:
    since: float  # wall clock of the first one
    count: int = 1
    shown: int = 1  # count when last printed
    shown_at: float = 0.0  # monotonic


class Failures:
    def __init__(
        self, emit: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def report(self, text: str) -> None:
        key = _NOISE.sub("#", text)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= _KEPT:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = _Seen(time.time(), shown_at=now)
            self._emit(f"forkproxy template: an instance failed:\n{text.rstrip()}")
            return
        seen.count += 1
        if seen.count == 2 or now - seen.shown_at >= REPEAT_EVERY:
            last = text.rstrip().rsplit("\n", 1)[-1]
            at = time.strftime("%H:%M:%S", time.localtime(seen.since))
            self._emit(
                f"forkproxy template: instance failed again (x{seen.count} since {at}): {last}"
            )
            seen.shown, seen.shown_at = seen.count, now
