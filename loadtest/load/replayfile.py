"""A locustfile for `forkproxy tune --access-log FILE`: the log's GET/HEAD requests sent at
their recorded times, scaled (FORKPROXY_REPLAY_SCALE: 0.5 replays an hour in 30 minutes).

FORKPROXY_ACCESS_LOG: the log (common/combined format); FORKPROXY_REPLAY_SCALE: factor on
the recorded offsets (1). Run with a fixed user count (-u): the users are senders sharing
one schedule, so a request waits for a free sender only when that many are in flight."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from locust import HttpUser, constant, events, task
from locust.exception import StopUser

try:
    from forkproxy.loadtest.load import accesslog
except ImportError:  # run from a checkout without `pip install`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from forkproxy.loadtest.load import accesslog

_LOG = accesslog.read(os.environ["FORKPROXY_ACCESS_LOG"])
_SCALE = float(os.environ.get("FORKPROXY_REPLAY_SCALE", "1"))
_next = iter(_LOG.entries)
_started: list[float] = []


def _start(**_kwargs: object) -> None:
    _started.append(time.monotonic())


events.test_start.add_listener(_start)  # type: ignore[no-untyped-call]


class ReplayUser(HttpUser):
    wait_time = constant(0)

    @task
    def replay(self) -> None:
        entry = next(_next, None)  # greenlets: no two take the same entry
        if entry is None:
            raise StopUser()
        t0 = _started[0] if _started else time.monotonic()
        # locust has gevent-patched time.sleep: this waits without blocking other senders
        time.sleep(max(0.0, t0 + entry.offset * _SCALE - time.monotonic()))
        if entry.method == "HEAD":
            self.client.head(entry.target, name=entry.name)
        else:
            self.client.get(entry.target, name=entry.name)
