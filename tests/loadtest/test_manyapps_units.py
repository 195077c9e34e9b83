"""Pure parts of the many-apps section: memory-seconds over samples, the generated configs
(each variant's keys as forkproxy's own parser takes them), the metrics it reads, and the
docs merge that lets `bench --only manyapps` refresh one section of BENCHMARKS.md."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from forkproxy.loadtest.load.manyapps_trace import make_trace
from forkproxy.loadtest.report import markdown
from forkproxy.loadtest.report.stats import memory_seconds
from forkproxy.loadtest.run import manyapps_apps
from forkproxy.loadtest.sections.manyapps import cold_requests, counters
from forkproxy.loadtest.sections.model import Section, Table
from forkproxy.proxy import config as proxy_config


def test_memory_seconds_holds_each_sample_until_the_next() -> None:
    samples = [(0.0, 100.0), (1.0, 200.0), (3.0, 50.0)]
    assert memory_seconds(samples, 0.0, 4.0) == pytest.approx(100 + 400 + 50)
    # clipped to the window on both sides
    assert memory_seconds(samples, 0.5, 2.0) == pytest.approx(50 + 200)
    # unordered samples are ordered; nothing before the first sample is counted
    assert memory_seconds(list(reversed(samples)), -5.0, 4.0) == pytest.approx(550)
    assert memory_seconds(samples, 2.0, 2.0) == 0.0
    assert memory_seconds([], 0.0, 10.0) == 0.0


def test_memory_seconds_of_a_constant_is_value_times_time() -> None:
    samples = [(t * 0.7, 512.0) for t in range(100)]
    assert memory_seconds(samples, 0.0, 60.0) == pytest.approx(512.0 * 60.0)


@pytest.mark.parametrize("variant", manyapps_apps.VARIANTS)
def test_each_variant_config_parses(variant: str, tmp_path: Path) -> None:
    trace = make_trace(6, 10, seed=2)
    folders = manyapps_apps.write_apps(tmp_path, trace.apps)
    doc = manyapps_apps.config(
        variant, trace.apps, folders, "bench", manyapps_apps.accepted_template_key()
    )
    cfg = proxy_config.parse(doc)
    assert [a.name for a in cfg.apps] == [a.name for a in trace.apps]
    pools = {a.pool for a in cfg.apps}
    if variant == "always-on":
        assert all(p.min_instances == p.max_instances == 1 for p in pools)
        assert all(a.backend.mode == "exec" for a in cfg.apps)
    elif variant == "keepalive-90s":
        assert {p.idle_ttl for p in pools} == {90.0}
    else:
        assert pools == {proxy_config.parse({}).pool}  # an empty [pool]: the defaults
    for a in trace.apps:
        assert (folders[a.name] / f"{manyapps_apps.module_name(a)}.py").exists()


def test_template_key_is_only_set_where_the_config_takes_it() -> None:
    assert manyapps_apps.accepted_template_key([("pool", "no_such_key_here")]) is None
    # a key the parser does take is picked (standing in for template_idle_ttl)
    assert manyapps_apps.accepted_template_key(
        [("pool", "no_such_key_here"), ("pool", "idle_ttl")]
    ) == ("pool", "idle_ttl")


def test_counters_from_metrics() -> None:
    text = "\n".join(
        [
            "# TYPE forkproxy_instance_starts counter",
            'forkproxy_instance_starts_total{result="ok"} 7.0',
            'forkproxy_instance_starts_total{result="died"} 2.0',
            "# TYPE forkproxy_request_duration_seconds histogram",
            'forkproxy_request_duration_seconds_bucket{kind="cold",le="+Inf"} 5.0',
            'forkproxy_request_duration_seconds_count{kind="cold"} 5.0',
            'forkproxy_request_duration_seconds_sum{kind="cold"} 0.1',
            'forkproxy_request_duration_seconds_count{kind="warm"} 90.0',
            'forkproxy_request_duration_seconds_sum{kind="warm"} 0.2',
        ]
    )
    assert counters(text + "\n") == {"starts": 7.0, "failed_starts": 2.0, "cold": 5.0}


def test_cold_requests_from_the_access_log() -> None:
    log = "\n".join(
        [
            "2026-12-07 02:48:43,546 INFO forkproxy.pool: instance i-1 started",
            '2026-12-07 02:48:43,600 INFO forkproxy.access: 127.0.0.1 "GET / HTTP/1.1" 200 '
            "51B 12.5ms queue=10.1ms cold instance=i-1 id=ma3",
            '2026-12-07 02:48:43,700 INFO forkproxy.access: 127.0.0.1 "GET / HTTP/1.1" 200 '
            "51B 1.5ms queue=0.0ms instance=i-1 id=ma4",
            '2026-12-07 02:48:43,800 INFO forkproxy.access: 127.0.0.1 "GET / HTTP/1.1" 200 '
            "51B 9.5ms queue=8.0ms cold instance=i-2 id=ma12",
            '2026-12-07 02:48:43,900 INFO forkproxy.access: 127.0.0.1 "GET / HTTP/1.1" 200 '
            "51B 9.5ms queue=8.0ms cold instance=i-2 id=other",
        ]
    )
    assert cold_requests(log) == {3, 12}


def _section(key: str, value: Any, plot: str = "") -> Section:
    # as the real ones: the headline starts with the title's words before its colon
    s = Section(key, f"{key}: title", headline=f"{key} says {value}")
    s.tables.append(Table(["a"], [[value]]))
    if plot:
        s.plots.append(plot)
    s.data = {"big": [1, 2, 3]}
    return s


def _meta(command: str, finished: str) -> dict[str, Any]:
    return {
        "work": "/tmp/w",
        "command": command,
        "quick": False,
        "loadavg_1m_at_start": 0.5,
        "finished": finished,
        "seconds": 10.0,
        "machine": {
            "loadavg_1m_at_end": 0.5,
            "cpus": 2,
            "cpu": "x",
            "python": "3.11",
            "kernel": "6",
        },
    }


def test_only_one_section_refreshes_its_part_of_the_docs(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    snapshot = docs / "bench" / "sections.json"
    order = ("memory", "manyapps", "burst")
    full_out = tmp_path / "full"
    full_out.mkdir()
    for name in ("manyapps-a.png", "burst.png"):
        (full_out / name).write_bytes(b"png")
    full = [
        _section("memory", 1),
        _section("manyapps", "old", "manyapps-a.png"),
        _section("burst", 3, "burst.png"),
    ]
    markdown.write(full_out, full, _meta("bench", "T1"), True, order=order, snapshot=snapshot)
    first = (docs / "BENCHMARKS.md").read_text()
    assert "manyapps says old" in first and "burst says 3" in first
    assert "data" not in json.loads(snapshot.read_text())["sections"][0]

    # --only manyapps, into another output dir: the page keeps memory and burst as they were
    only_out = tmp_path / "only"
    only_out.mkdir()
    (only_out / "manyapps-a.png").write_bytes(b"new")
    fresh = [_section("manyapps", "new", "manyapps-a.png")]
    markdown.write(
        only_out,
        fresh,
        _meta("bench --only manyapps", "T2"),
        True,
        order=order,
        snapshot=snapshot,
    )
    page = (docs / "BENCHMARKS.md").read_text()
    assert "manyapps says new" in page and "manyapps says old" not in page
    assert "memory says 1" in page and "burst says 3" in page
    assert page.index("## memory: title") < page.index("## manyapps: title")
    assert page.index("## manyapps: title") < page.index("## burst: title")
    assert "Generated by `bench` at T1" in page
    assert "Refreshed since: manyapps by `bench --only manyapps` at T2" in page
    assert (docs / "bench" / "manyapps-a.png").read_bytes() == b"new"
    assert (docs / "bench" / "burst.png").read_bytes() == b"png"  # kept, not deleted
    # the output dir holds this run alone
    results = json.loads((only_out / "results.json").read_text())
    assert [s["key"] for s in results["sections"]] == ["manyapps"]

    # refreshed again: one "refreshed" line for it, not two
    markdown.write(
        only_out, fresh, _meta("bench --only manyapps", "T3"), True, order=order, snapshot=snapshot
    )
    page = (docs / "BENCHMARKS.md").read_text()
    assert page.count("Refreshed since") == 1 and "at T3" in page

    # a full run starts the page afresh
    markdown.write(full_out, full, _meta("bench", "T4"), True, order=order, snapshot=snapshot)
    page = (docs / "BENCHMARKS.md").read_text()
    assert "Refreshed since" not in page and "manyapps says old" in page


def test_without_an_earlier_run_the_page_itself_is_spliced(tmp_path: Path) -> None:
    """No data from the run that wrote the page (a page older than the snapshot): the fresh
    section replaces its namesake on the page, or is appended; the rest stays as written."""
    docs = tmp_path / "docs"
    (docs / "bench").mkdir(parents=True)
    old = [_section("memory", 1), _section("burst", 3), _section("manyapps", "old")]
    page = markdown.document(old, _meta("bench", "T1"), "bench/")
    (docs / "BENCHMARKS.md").write_text(page)
    (docs / "bench" / "burst.png").write_bytes(b"png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manyapps-a.png").write_bytes(b"new")
    fresh = [_section("manyapps", "new", "manyapps-a.png")]
    written = markdown.write(
        out,
        fresh,
        _meta("bench --only manyapps", "T2"),
        True,
        order=("memory", "manyapps", "burst"),
        snapshot=docs / "bench" / "sections.json",
    )
    assert written[-1] == docs / "BENCHMARKS.md"
    text = (docs / "BENCHMARKS.md").read_text()
    assert text.count("## manyapps: title") == 1 and "manyapps says new" in text
    assert "manyapps says old" not in text
    kept = page[page.index("## memory: title") : page.index("## manyapps: title")]
    assert kept in text  # the other sections as they were, byte for byte
    assert "memory says 1" in text and "burst says 3" in text
    assert text.index("## memory: title") < text.index("## burst: title")
    summary = text[text.index("## Summary") : text.index("## memory: title")]
    assert "- memory says 1" in summary and "- manyapps says new" in summary
    assert "Generated by `bench` at T1" in text
    assert text.count("Refreshed since: manyapps by `bench --only manyapps` at T2") == 1
    assert (docs / "bench" / "manyapps-a.png").read_bytes() == b"new"
    assert (docs / "bench" / "burst.png").exists()
    # once more: still one of each
    markdown.write(
        out,
        fresh,
        _meta("bench --only manyapps", "T3"),
        True,
        order=("memory", "manyapps", "burst"),
        snapshot=docs / "bench" / "sections.json",
    )
    text = (docs / "BENCHMARKS.md").read_text()
    assert text.count("## manyapps: title") == 1 and text.count("Refreshed since") == 1
    assert text.count("- manyapps says new") == 1 and "at T3" in text


def test_no_page_and_no_earlier_run_writes_no_page(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    out = tmp_path / "out"
    written = markdown.write(
        out,
        [_section("manyapps", 1)],
        _meta("bench --only manyapps", "T"),
        True,
        order=("memory", "manyapps"),
        snapshot=docs / "bench" / "sections.json",
    )
    assert not (docs / "BENCHMARKS.md").exists()
    assert written == [out / "results.json", out / "results.md"]


def test_merge_without_a_previous_run_keeps_what_it_has() -> None:
    fresh = [_section("manyapps", 1)]
    meta = _meta("x", "T")
    assert markdown.merge(None, fresh, meta, ("memory", "manyapps")) == (fresh, meta)


def test_section_round_trips_through_its_dict() -> None:
    s = _section("burst", math.pi, "b.png")
    back = markdown.section_from_dict(s.as_dict())
    assert back == s
