"""Prometheus metrics (prefix forkproxy_), one registry per proxy so tests can run
several proxies in one process."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# the pool's instance states (proxy/slots.py State values), named here to keep this
# module free of the pool's imports
STATE_NAMES = ("starting", "ready", "draining", "stopped", "failed")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "forkproxy"
        self.requests = Counter(
            f"{p}_requests", "Requests answered, by status code", ["code"], registry=r
        )
        self.latency = Histogram(
            f"{p}_request_duration_seconds",
            "Time to the upstream response headers, cold (waited on a start) or warm",
            ["kind"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{p}_queue_wait_seconds",
            "Time a request held for a free instance",
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{p}_queue_depth", "Requests held waiting for an instance", registry=r
        )
        self.in_flight = Gauge(f"{p}_in_flight", "Requests forwarded and not finished", registry=r)
        self.instances = Gauge(f"{p}_instances", "Instances by state", ["state"], registry=r)
        self.spares = Gauge(
            f"{p}_spares",
            "Warm capacity held outside the pool: prefork children, parked paused containers",
            registry=r,
        )
        self.starts = Counter(
            f"{p}_instance_starts", "Instance starts by result", ["result"], registry=r
        )
        self.start_time = Histogram(
            f"{p}_instance_start_seconds",
            "Instance start time by phase (backend: until an endpoint; ready: until it answers)",
            ["phase"],
            buckets=_LATENCY,
            registry=r,
        )
        self.start_cost = Gauge(
            f"{p}_start_cost_seconds",
            "Measured start-to-ready time the policy prices headroom and keep-alive by "
            "(median of the last 9 starts)",
            registry=r,
        )
        self.keep_alive = Gauge(
            f"{p}_keep_alive_seconds",
            "How long idle capacity is kept (idle_ttl, or priced by the start cost)",
            registry=r,
        )
        self.gap_window = Gauge(
            f"{p}_gap_window_seconds",
            "How long the app's last instance is held idle, learned from its idle gaps "
            "(0: not learned yet, or its gaps are too long to pay)",
            registry=r,
        )
        self.demand_growth = Gauge(
            f"{p}_demand_growth",
            "How fast requests in flight + held rise, per second (0 when flat or falling)",
            registry=r,
        )
        self.stops = Counter(
            f"{p}_instance_stops", "Instance stops by reason", ["reason"], registry=r
        )
        self.instance_memory = Gauge(
            f"{p}_instance_memory_max_bytes",
            "Memory (PSS) of the largest ready instance at the last measurement (every "
            "second with pool.max_memory or budget.max_memory set, else every 5 s)",
            registry=r,
        )
        self.memory = Gauge(
            f"{p}_instances_memory_bytes",
            "Memory (PSS) the ready instances hold together, at the last measurement",
            registry=r,
        )
        self.template_memory = Gauge(
            f"{p}_templates_memory_bytes",
            "Memory (PSS) held by templates and their prefork spares (fork mode)",
            registry=r,
        )
        self.budget_limit = Gauge(
            f"{p}_budget_limit",
            "The [budget] caps (instances; memory in bytes); 0: no cap",
            ["resource"],
            registry=r,
        )
        self.budget_used = Gauge(
            f"{p}_budget_used",
            "What every app holds against the [budget] (instances; memory in bytes)",
            ["resource"],
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{p}_upstream_errors", "Errors talking to instances, by kind", ["kind"], registry=r
        )
        self.rejected = Counter(
            f"{p}_rejected", "Requests refused before forwarding, by reason", ["reason"], registry=r
        )
        self.retries = Counter(f"{p}_retries", "Requests retried on another instance", registry=r)


# (Metrics attribute, forkproxy_app_ name, help, how the unlabelled series sums the apps)
_PER_POOL: tuple[tuple[str, str, str, Callable[[Iterable[float]], float]], ...] = (
    ("start_cost", "start_cost_seconds", "Measured start-to-ready time, by app", max),
    ("keep_alive", "keep_alive_seconds", "How long idle capacity is kept, by app", max),
    (
        "gap_window",
        "gap_window_seconds",
        "How long the app's last instance is held idle, learned, by app",
        max,
    ),
    ("demand_growth", "demand_growth", "How fast demand rises per second, by app", sum),
    (
        "instance_memory",
        "instance_memory_max_bytes",
        "Memory (PSS) of the app's largest ready instance",
        max,
    ),
    ("memory", "instances_memory_bytes", "Memory (PSS) the app's ready instances hold", sum),
    (
        "template_memory",
        "templates_memory_bytes",
        "Memory (PSS) the app's templates and their spares hold",
        sum,
    ),
)


class _Part:
    """One app's share of a gauge its pool sets: the app's own series, and the value
    kept for the machine-wide total the unlabelled series shows."""

    def __init__(self, child: Gauge) -> None:
        self.child = child
        self.value = 0.0
        self.fn: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value
        self.child.set(value)

    def set_function(self, fn: Callable[[], float]) -> None:
        self.fn = fn
        self.child.set_function(fn)

    def get(self) -> float:
        return float(self.fn()) if self.fn is not None else self.value


class _Labelled:
    """`.labels(state)` for one app, over a gauge labelled (app, state)."""

    def __init__(self, gauge: Gauge, app: str, parts: dict[tuple[str, ...], list[_Part]]) -> None:
        self._gauge, self._app, self._parts = gauge, app, parts
        self._mine: dict[tuple[str, ...], _Part] = {}

    def labels(self, *values: str) -> _Part:
        if (part := self._mine.get(values)) is None:
            part = self._mine[values] = _Part(self._gauge.labels(self._app, *values))
            self._parts.setdefault(values, []).append(part)
        return part


class _BothCounter:
    def __init__(self, a: Counter, b: Counter) -> None:
        self._a, self._b = a, b

    def inc(self, amount: float = 1.0) -> None:
        self._a.inc(amount)
        self._b.inc(amount)


class _Both:
    """`.labels(code)`: the machine-wide counter and the app's, counted together."""

    def __init__(self, shared: Counter, per_app: Counter, app: str) -> None:
        self._shared, self._per_app, self._app = shared, per_app, app

    def labels(self, *values: str) -> _BothCounter:
        return _BothCounter(self._shared.labels(*values), self._per_app.labels(self._app, *values))


class AppMetrics:
    """Series per app (forkproxy_app_*, label `app`) beside the existing ones, which keep
    their names and become the totals over every app. Each app's pool and forwarder get
    a Metrics whose gauges and request counter are the app's (for_app)."""

    def __init__(self, shared: Metrics) -> None:
        r, p = shared.registry, "forkproxy_app"
        self.shared = shared
        self.instances = Gauge(
            f"{p}_instances", "Instances by app and state", ["app", "state"], registry=r
        )
        self.in_flight = Gauge(f"{p}_in_flight", "Requests forwarded, by app", ["app"], registry=r)
        self.queue_depth = Gauge(f"{p}_queue_depth", "Requests held, by app", ["app"], registry=r)
        self.spares = Gauge(
            f"{p}_spares", "Warm capacity outside the pool, by app", ["app"], registry=r
        )
        self.requests = Counter(
            f"{p}_requests",
            "Requests answered, by app and status code",
            ["app", "code"],
            registry=r,
        )
        # the per-pool gauges: each app's own series; the unlabelled one is the largest
        # (a time, a size) or the sum (growth, memory) over the apps
        self.per_pool: dict[str, tuple[Gauge, Callable[[Iterable[float]], float]]] = {}
        for name, metric, doc, reduce in _PER_POOL:
            gauge = Gauge(f"{p}_{metric}", doc, ["app"], registry=r)
            self.per_pool[name] = (gauge, reduce)
        self._parts: dict[str, dict[tuple[str, ...], list[_Part]]] = {
            k: {} for k in ("instances", "in_flight", "queue_depth", "spares", *self.per_pool)
        }
        self._apps: dict[str, Metrics] = {}

    def _total(
        self,
        name: str,
        values: tuple[str, ...],
        reduce: Callable[[Iterable[float]], float] = sum,
    ) -> Callable[[], float]:
        parts = self._parts[name].setdefault(values, [])
        return lambda: float(reduce([part.get() for part in parts] or [0.0]))

    def for_app(self, app: str, *, requests: bool = True) -> Metrics:
        """The Metrics one app's pool and forwarder count into (one per app, kept across
        its generations, which set the same gauges as they do today). `requests=False`
        (the single app): no per-app request counter, so a request costs one counter
        increment as before apps (the total is the app's count anyway)."""
        if (m := self._apps.get(app)) is not None:
            return m
        shared = self.shared
        m = copy.copy(shared)
        own: dict[str, object] = {
            "instances": _Labelled(self.instances, app, self._parts["instances"]),
            "in_flight": _Labelled(self.in_flight, app, self._parts["in_flight"]).labels(),
            "queue_depth": _Labelled(self.queue_depth, app, self._parts["queue_depth"]).labels(),
            "spares": _Labelled(self.spares, app, self._parts["spares"]).labels(),
        }
        for name, (gauge, _) in self.per_pool.items():
            own[name] = _Labelled(gauge, app, self._parts[name]).labels()
        if requests:
            own["requests"] = _Both(shared.requests, self.requests, app)
        vars(m).update(own)  # duck-typed stand-ins: the pool only sets them
        for state in STATE_NAMES:
            shared.instances.labels(state).set_function(self._total("instances", (state,)))
            own_states = own["instances"]
            assert isinstance(own_states, _Labelled)
            own_states.labels(state)  # every state has a part, so totals read 0, not nothing
        for name in ("in_flight", "queue_depth", "spares"):
            gauge = getattr(shared, name)
            assert isinstance(gauge, Gauge)
            gauge.set_function(self._total(name, ()))
        for name, (_, reduce) in self.per_pool.items():
            gauge = getattr(shared, name)
            assert isinstance(gauge, Gauge)
            gauge.set_function(self._total(name, (), reduce))
        self._apps[app] = m
        return m
