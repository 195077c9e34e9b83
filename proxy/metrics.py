"""Prometheus metrics (prefix forkproxy_), one registry per proxy so tests can run
several proxies in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            "Memory (PSS) of the largest ready instance at the last measurement; measured "
            "only while pool.max_memory is set",
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{p}_upstream_errors", "Errors talking to instances, by kind", ["kind"], registry=r
        )
        self.rejected = Counter(
            f"{p}_rejected", "Requests refused before forwarding, by reason", ["reason"], registry=r
        )
        self.retries = Counter(f"{p}_retries", "Requests retried on another instance", registry=r)
