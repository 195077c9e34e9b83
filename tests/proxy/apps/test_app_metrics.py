"""Per-app series beside the existing ones, which become totals over the apps."""

from __future__ import annotations

from prometheus_client import generate_latest

from forkproxy.proxy.metrics import AppMetrics, Metrics


def test_per_app_series_and_totals() -> None:
    shared = Metrics()
    per_app = AppMetrics(shared)
    a, b = per_app.for_app("a"), per_app.for_app("b")
    assert per_app.for_app("a") is a  # one per app, across its generations
    a.instances.labels("ready").set(2)
    b.instances.labels("ready").set(3)
    b.instances.labels("starting").set(1)
    a.in_flight.set(4)
    b.queue_depth.set(7)
    a.spares.set_function(lambda: 2)
    a.requests.labels("200").inc()
    b.requests.labels("200").inc()
    b.requests.labels("404").inc()
    text = generate_latest(shared.registry).decode()
    for line in (
        'forkproxy_instances{state="ready"} 5.0',
        'forkproxy_instances{state="starting"} 1.0',
        'forkproxy_instances{state="draining"} 0.0',
        "forkproxy_in_flight 4.0",
        "forkproxy_queue_depth 7.0",
        "forkproxy_spares 2.0",
        'forkproxy_requests_total{code="200"} 2.0',
        'forkproxy_app_instances{app="a",state="ready"} 2.0',
        'forkproxy_app_instances{app="b",state="ready"} 3.0',
        'forkproxy_app_queue_depth{app="b"} 7.0',
        'forkproxy_app_spares{app="a"} 2.0',
        'forkproxy_app_requests_total{app="b",code="404"} 1.0',
    ):
        assert line in text, line


def test_the_single_app_counts_requests_once() -> None:
    shared = Metrics()
    only = AppMetrics(shared).for_app("default", requests=False)
    assert only.requests is shared.requests
    only.instances.labels("ready").set(1)
    text = generate_latest(shared.registry).decode()
    assert 'forkproxy_instances{state="ready"} 1.0' in text
    assert 'forkproxy_app_instances{app="default",state="ready"} 1.0' in text


def test_per_pool_gauges_report_every_app_under_its_own_label() -> None:
    # before: one unlabelled gauge, set by whichever app's pool updated last
    shared = Metrics()
    per_app = AppMetrics(shared)
    a, b = per_app.for_app("a"), per_app.for_app("b")
    a.start_cost.set(0.2)
    b.start_cost.set(0.01)
    a.keep_alive.set(30)
    b.keep_alive.set(5)
    a.demand_growth.set(1.5)
    b.demand_growth.set(2.0)
    a.instance_memory.set(100)
    b.instance_memory.set(300)
    a.memory.set(200)
    b.memory.set(300)
    b.template_memory.set(50)
    text = generate_latest(shared.registry).decode()
    for line in (
        'forkproxy_app_start_cost_seconds{app="a"} 0.2',
        'forkproxy_app_start_cost_seconds{app="b"} 0.01',
        'forkproxy_app_keep_alive_seconds{app="a"} 30.0',
        'forkproxy_app_keep_alive_seconds{app="b"} 5.0',
        'forkproxy_app_demand_growth{app="b"} 2.0',
        'forkproxy_app_instance_memory_max_bytes{app="a"} 100.0',
        'forkproxy_app_instances_memory_bytes{app="b"} 300.0',
        'forkproxy_app_templates_memory_bytes{app="b"} 50.0',
        'forkproxy_app_templates_memory_bytes{app="a"} 0.0',
        # the unlabelled series: the largest time and size, the sum of growth and memory
        "forkproxy_start_cost_seconds 0.2",
        "forkproxy_keep_alive_seconds 30.0",
        "forkproxy_demand_growth 3.5",
        "forkproxy_instance_memory_max_bytes 300.0",
        "forkproxy_instances_memory_bytes 500.0",
        "forkproxy_templates_memory_bytes 50.0",
    ):
        assert line in text, line
