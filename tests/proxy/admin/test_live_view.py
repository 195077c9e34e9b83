"""The live view's data under real load: the Server-Sent Events stream, `forkproxy top`
and /instances agree; the chart's series follow the pool; failures keep their reasons."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import subprocess
import sys
import time
from typing import Any

import pytest
from rich.console import Console

from forkproxy.proxy import top
from tests.conftest import ROOT, eventually, run_proxy
from tests.proxy.admin.helpers import POOL, bounded_load, sample_after, samples, table_key


async def test_stream_follows_the_pool_under_load() -> None:
    async with run_proxy(pool=POOL) as p:
        ok, seen = await asyncio.gather(
            bounded_load(p.url, workers=6, seconds=4), samples(p.admin, 5)
        )
        assert ok > 0
        peak = max(s["instances_live"] for s in seen)
        assert peak > 1, [s["states"] for s in seen]
        for s in seen:
            assert s["lower_bound"] == math.ceil(s["in_flight"] / POOL["max_concurrency"])
            assert s["in_flight"] == sum(r["in_flight"] for r in s["instances"])
            assert s["instances_live"] <= POOL["max_instances"]
        assert [s["seq"] for s in seen] == sorted({s["seq"] for s in seen})
        last = seen[-1]
        assert last["start_results"]["ok"] >= peak
        assert any(s["starts_per_s"] > 0 for s in seen) or last["start_results"]["ok"] <= 1
        assert last["settings"]["max_concurrency"] == POOL["max_concurrency"]
        assert last["settings_source"] in ("config", "pool")
        # a new subscriber gets the chart's history first: the samples already taken
        history = await _history(p.admin)
        assert history[-1]["seq"] >= last["seq"]
        assert max(h["states"].get("ready", 0) for h in history) > 1


async def _history(admin: str) -> list[dict[str, object]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async for event, data in top.events(session, admin):
            assert event == "history"
            return list(data)
    raise AssertionError("no history event")


async def test_stream_top_and_instances_agree() -> None:
    async with run_proxy(pool=POOL) as p:
        await bounded_load(p.url, workers=5, seconds=2)
        await eventually(
            lambda: (
                p.proxy.pool.queued == 0
                and all(r["in_flight"] == 0 for r in p.proxy.pool.describe())
            ),
            10,
            "load to drain",
        )
        settled = time.time()
        sample = await sample_after(p.admin, settled)  # taken after the pool settled
        listed = await p.instances()
        assert len(listed) > 1
        by_id = {r["id"]: r for r in listed}
        assert sorted(map(table_key, listed)) == sorted(map(table_key, sample["instances"]))
        assert sorted(map(table_key, listed)) == sorted(map(table_key, top.rows(sample)))
        for row in top.rows(sample):
            assert abs(row["age"] - by_id[row["id"]]["age"]) < 2.5
            assert row["owner"] == p.proxy.owner_id
        # and what `forkproxy top --once` prints is that table
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "forkproxy", "top", "--once", p.admin],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        for row in listed:
            line = next(ln for ln in out.stdout.splitlines() if row["id"] in ln)
            cells = [c.strip() for c in line.strip("│ ").split("│")]
            assert cells[:5] == [
                row["id"],
                row["backend"],
                row["state"],
                "0",
                str(row["requests_served"]),
            ]
            assert cells[7] == row["endpoint"]


async def test_start_failures_keep_their_reason() -> None:
    crash = [sys.executable, "-c", "import sys; sys.exit(3)", "{port}"]
    backend = {"mode": "exec", "command": crash}
    async with run_proxy(backend=backend, pool={"start_retries": 2, "hold_timeout": "5s"}) as p:
        async with p.session.get(p.url + "/") as r:
            assert r.status == 503
        seen = await samples(p.admin, 2)  # the first may predate the failures
        failures = seen[-1]["failures"]
        assert failures, seen[-1]
        assert all(f["reason"] and f["instance"].startswith("i-") for f in failures)
        assert any("3" in f["error"] for f in failures), failures  # the exit code
        assert sum(v for k, v in seen[-1]["start_results"].items() if k != "ok") >= len(failures)
        # the pool keeps its own failures: a second proxy in this process sees none of them
        async with run_proxy() as other:
            async with other.session.get(other.url + "/") as r:
                assert r.status == 200
            assert (await samples(other.admin, 1))[0]["failures"] == []


async def test_open_stream_does_not_hold_shutdown() -> None:
    async with run_proxy() as p:
        import aiohttp

        session = aiohttp.ClientSession()
        try:
            stream = top.events(session, p.admin)
            assert (await anext(stream))[0] == "history"
            t0 = time.monotonic()
            await p.proxy.stop()
            assert time.monotonic() - t0 < 5.0
            with pytest.raises(StopAsyncIteration):
                while True:
                    await anext(stream)
        finally:
            await session.close()
        p.proxy.ready = True  # stopped above; run_proxy stops it again


async def test_settings_are_what_the_pool_runs() -> None:
    async with run_proxy(pool=POOL) as p:
        sample = (await samples(p.admin, 1))[0]
        pool: Any = p.proxy.pool
        if hasattr(pool, "effective_settings"):  # `auto` values resolved by the pool
            assert sample["settings_source"] == "pool"
            expected = json.loads(json.dumps(pool.effective_settings(), default=str))
        else:
            assert sample["settings_source"] == "config"
            cfg = dataclasses.asdict(p.proxy.cfg.pool)
            expected = {k: "auto" if v is None else v for k, v in cfg.items()}
        assert sample["settings"] == expected


async def test_spares_are_shown_beside_the_instances() -> None:
    """prefork spares hold memory but are not instances: /instances, /metrics, the stream and
    `forkproxy top` show how many there are, and none of them is listed as an instance."""
    backend = {"prefork": 2}
    async with run_proxy(pool={**POOL, "min_instances": 0}, backend=backend) as p:
        await eventually(lambda: p.proxy.pool.backend.spares == 2, 10, "two spares forked")
        async with p.session.get(p.admin + "/instances") as r:
            doc = await r.json()
        assert doc["spares"] == 2 and doc["instances"] == []
        async with p.session.get(p.admin + "/metrics") as r:
            text = await r.text()
        assert "\nforkproxy_spares 2.0\n" in text
        sample = await sample_after(p.admin, time.time())
        assert sample["spares"] == 2
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(top.render(sample, [sample]))
        assert "0 draining; 2 spare)" in console.export_text()
