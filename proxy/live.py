"""The live view's data: once a second, a sample of what the pool already holds
(instances, queue, counters), kept for a few minutes and handed to subscribers
(the page's Server-Sent Events, `forkproxy top`). Nothing here runs per request."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from forkproxy.backends.support.tasks import TaskSet

if TYPE_CHECKING:
    from forkproxy.proxy.admin_view import AdminView, PoolView

HISTORY_SECONDS = 300


def effective_settings(view: PoolView) -> tuple[dict[str, Any], str]:
    """The pool's settings as it runs them. A pool that resolves `auto` values exposes
    effective_settings(); otherwise the config is what runs."""
    pool: Any = view
    if hasattr(pool, "effective_settings"):
        return dict(pool.effective_settings()), "pool"
    # an unset (None) value is one the pool resolves itself ("auto")
    cfg = dataclasses.asdict(view.cfg)  # max_concurrency "auto" resolved
    return {k: "auto" if v is None else v for k, v in cfg.items()}, "config"


def _states(rows: list[dict[str, Any]]) -> dict[str, int]:
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    return states


def _by_label(samples: Any, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in samples.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[s.labels[label]] = s.value
    return out


class Sampler:
    """Samples the pool every `interval` seconds into a ring of HISTORY_SECONDS."""

    def __init__(self, view: AdminView, interval: float = 1.0) -> None:
        self.view = view
        self.interval = interval
        self.history: deque[dict[str, Any]] = deque(maxlen=max(1, int(HISTORY_SECONDS / interval)))
        self.latest: dict[str, Any] | None = None
        self._tasks = TaskSet("live")
        self._new = asyncio.Event()
        self._closed = False
        self._seq = 0
        self._prev_starts: tuple[float, float] | None = None  # (monotonic, ok starts)
        self._prev_requests: dict[str, tuple[float, int]] = {}  # app -> (monotonic, count)
        self._seen: dict[str, tuple[float, set[str]]] = {}  # app -> (monotonic, instance ids)

    async def start(self) -> None:
        self.sample()
        self._tasks.spawn(self._loop(), "live-sampler")

    async def aclose(self) -> None:
        self.close()
        await self._tasks.aclose()

    def close(self) -> None:
        """End every subscriber's stream (the admin listener is shutting down)."""
        self._closed = True
        self._new.set()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def sample(self) -> dict[str, Any]:
        serving = self.view.serving()
        pool = serving.pool
        rows = pool.describe()
        for row in rows:  # the pool holds only instances this run started
            row.setdefault("owner", row.get("meta", {}).get("owner") or serving.owner_id)
        states = _states(rows)
        in_flight = sum(int(r["in_flight"]) for r in rows)
        results = _by_label(self.view.metrics.starts, "result")
        now = time.monotonic()
        ok = results.get("ok", 0.0)
        rate = 0.0
        if self._prev_starts is not None and now > self._prev_starts[0]:
            rate = (ok - self._prev_starts[1]) / (now - self._prev_starts[0])
        self._prev_starts = (now, ok)
        settings, source = effective_settings(pool)
        max_c = pool.cfg.max_concurrency  # "auto" already resolved into the config
        self._seq += 1
        per_app: dict[str, dict[str, Any]] = {}
        apps = self._apps(now, pool, rows, per_app)
        sample = {
            "seq": self._seq,
            "t": time.time(),
            "pool": serving.pool_name,
            "backend": serving.backend_type,
            "owner": serving.owner_id,
            "queued": pool.queued,
            "in_flight": in_flight,
            "states": states,
            "instances_live": states.get("starting", 0) + states.get("ready", 0),
            "spares": serving.spares,
            "lower_bound": math.ceil(in_flight / max_c),
            "starts_per_s": round(rate, 3),
            "start_results": results,
            "failures": list(pool.recent_failures),
            "settings": settings,
            "settings_source": source,
            "instances": rows,
            "apps": apps,
            "budget": self.view.budget(),
        }
        sample["series"] = self._series(sample, per_app)
        self.latest = sample
        self.history.append(slim(sample))
        self._new.set()
        self._new = asyncio.Event()
        return sample

    def _apps(
        self,
        now: float,
        first: PoolView,
        rows: list[dict[str, Any]],
        series: dict[str, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """One row per app: its instances by what they do (and the instances, for
        `forkproxy top`), its queue, requests per second since the last sample, the
        memory measured, its template. Each app's chart series go into `series`."""
        out = []
        for name, serving in self.view.apps().items():
            pool = serving.pool
            counts = {"starting": 0, "busy": 0, "idle": 0, "draining": 0}
            # the serving pool's rows as the sample has them: one moment, one table
            instances = rows if pool is first else pool.describe()
            for row in instances:
                row.setdefault("owner", serving.owner_id)
                state = row["state"]
                if state == "ready":
                    state = "busy" if row["in_flight"] or row.get("working") else "idle"
                if state in counts:
                    counts[state] += 1
            series[name] = self._app_series(now, name, pool, serving.spares, instances)
            prev = self._prev_requests.get(name)
            rate = 0.0
            if prev is not None and now > prev[0]:
                rate = max(0, serving.requests - prev[1]) / (now - prev[0])
            self._prev_requests[name] = (now, serving.requests)
            settings, source = effective_settings(pool)
            out.append(
                {
                    "app": name,
                    "pool": serving.pool_name,
                    "backend": serving.backend_type,
                    **counts,
                    "queued": pool.queued,
                    "requests_per_s": round(rate, 2),
                    "memory": serving.memory,
                    "template_memory": serving.template_memory,
                    "template": serving.template,
                    "instances": instances,
                    # the settings and failures panels follow the app the page picked
                    "settings": settings,
                    "settings_source": source,
                    "failures": list(pool.recent_failures),
                }
            )
        return out

    def _app_series(
        self, now: float, name: str, pool: PoolView, spares: int, rows: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """What the charts plot, for one app. Its starts per second are the instances new
        since the last sample: the start counter is machine-wide (no app label), and an
        instance's id is the pool's own first-hand record of a start. One that starts and
        is gone within one interval is missed; at a 1 s interval that is rare."""
        in_flight = sum(int(r["in_flight"]) for r in rows)
        ids = {str(r["id"]) for r in rows}
        rate = 0.0
        prev = self._seen.get(name)
        if prev is not None and now > prev[0]:
            rate = len(ids - prev[1]) / (now - prev[0])
        self._seen[name] = (now, ids)
        return {
            "queued": pool.queued,
            "in_flight": in_flight,
            "states": _states(rows),
            "lower_bound": math.ceil(in_flight / pool.cfg.max_concurrency),
            "starts_per_s": round(rate, 3),
            "spares": spares,
        }

    @staticmethod
    def _series(sample: dict[str, Any], apps: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The charts' series: "*" for the whole machine, then one per app. The machine's
        are the apps' summed: they share one budget, so instances, requests and the lower
        bound (instances are never shared across apps, so the bounds add) all add up. Its
        starts are the machine-wide counter's (exact, and what the page always showed)."""
        total: dict[str, Any] = {"queued": 0, "in_flight": 0, "states": {}, "lower_bound": 0}
        total["spares"] = 0
        for s in apps.values():
            for key in ("queued", "in_flight", "lower_bound", "spares"):
                total[key] += s[key]
            for state, n in s["states"].items():
                total["states"][state] = total["states"].get(state, 0) + n
        total["starts_per_s"] = sample["starts_per_s"]
        if not apps:  # a view without apps (tests of one pool): the serving pool's
            total = {k: sample[k] for k in SERIES_KEYS}
        return {"*": total, **apps}

    async def next(self, after: int) -> dict[str, Any] | None:
        """The first sample newer than `after`, or None once closed."""
        while not self._closed:
            if self.latest is not None and self.latest["seq"] > after:
                return self.latest
            await self._new.wait()
        return None


# what a chart plots of one series (the machine's, or one app's)
SERIES_KEYS = ("queued", "in_flight", "states", "lower_bound", "starts_per_s", "spares")
# the top-level series stay the serving (first) app's, for `forkproxy top` and scripts
CHART_KEYS = ("seq", "t", *SERIES_KEYS[:-1], "series")


def slim(sample: dict[str, Any]) -> dict[str, Any]:
    """What the chart needs of a sample (the history sent on connect)."""
    return {k: sample[k] for k in CHART_KEYS}
