"""docs/grafana/forkproxy.json: every panel query parses as PromQL and names only
metrics (and labels) that a running proxy really exports after some traffic."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, eventually, run_proxy
from tests.proxy.admin.helpers import POOL, bounded_load
from tests.proxy.apps.test_apps_e2e import config, running

DASHBOARD = ROOT / "docs" / "grafana" / "forkproxy.json"
# Grafana's variables, as Grafana would substitute them before sending the query
VARIABLES = {
    "$__rate_interval": "1m",
    "$max_concurrency": "10",
    "$instance": ".*",
    "$job": ".*",
    "$app": ".*",
}
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
HISTOGRAM_LABELS = {"le"}


def _queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    assert len(out) >= 10
    return out


def _parse(expr: str) -> promql_parser.Expr:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return promql_parser.parse(expr)


def _selectors(tree: promql_parser.Expr) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(metric name, label names it matches on) of every selector; labels grouped by."""
    selectors: list[tuple[str, set[str]]] = []
    grouped: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append((node.name, {m.name for m in node.matchers.matchers}))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouped.update(node.modifier.labels)

    promql_parser.walk(tree, visit)
    return selectors, grouped


def test_every_query_parses() -> None:
    for title, expr in _queries():
        selectors, _ = _selectors(_parse(expr))
        assert selectors, f"{title}: {expr} selects nothing"
        assert all(name.startswith("forkproxy_") for name, _ in selectors), (title, expr)


async def test_every_query_names_an_exported_metric() -> None:
    pool = {**POOL, "idle_ttl": "1s", "max_queue": 4, "hold_timeout": "2s"}
    async with run_proxy(pool=pool) as p:
        # traffic that touches every series the dashboard draws: cold and warm requests,
        # queueing, starts, idle stops, refusals past max_queue, an upstream error
        assert await bounded_load(p.url, workers=12, seconds=3, ms=200) > 0
        async with p.session.get(p.url + "/crash") as r:  # an instance dies mid-request
            assert r.status == 502
        await eventually(lambda: p.proxy.pool.describe() == [], 15, "idle instances reaped")
        async with p.session.get(p.admin + "/metrics") as r:
            text = await r.text()
    # the per-app panels: two apps under a budget, each served once and measured
    async with running(config("60s", budget={"max_instances": 4, "max_memory": "1000g"})) as c:
        assert await c.get("shop.test") == (200, "shop /")
        assert await c.get("blog.test", "/blog/") == (200, "blog /blog/")

        async def measured() -> bool:
            return 'forkproxy_app_instances_memory_bytes{app="blog"} 0.0' not in str(
                (await c.admin("/metrics"))[1]
            )

        await eventually(measured, 20, "both apps measured")
        text += str((await c.admin("/metrics"))[1])
    exported: dict[str, set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported[sample.name].update(sample.labels)
    for title, expr in _queries():
        selectors, grouped = _selectors(_parse(expr))
        labels_seen: set[str] = set()
        for name, matched in selectors:
            assert name in exported, f"{title}: {name} is not in /metrics"
            labels_seen |= exported[name]
            unknown = matched - exported[name] - SCRAPE_LABELS - {"__name__"}
            assert not unknown, f"{title}: {name} has no label {unknown}"
        unknown = grouped - labels_seen - SCRAPE_LABELS - HISTOGRAM_LABELS
        assert not unknown, f"{title}: grouped by {unknown}, which {expr} does not carry"


def test_per_app_panels_follow_the_app_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dash["templating"]["list"]]
    assert "app" in names
    per_app = [p for p in dash["panels"] if p["title"].startswith("Per app")]
    assert len(per_app) >= 5
    for panel in per_app:
        for target in panel["targets"]:
            assert 'app=~"$app"' in target["expr"] and "by (app" in target["expr"], panel["title"]
    assert any(p["title"].startswith("Budget") for p in dash["panels"])
