"""slowhttptest (slowloris, slow body, slow read; 200 connections at 50/s for 15 s each)
against a forkproxy subprocess with tight deadlines: a probe loop keeps getting 200s and
the proxy closes slow connections near the configured deadlines (loadtest/slowhttp.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from forkproxy.loadtest.slowhttp import MODES, render, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("slowhttptest") is None
        and os.environ.get("FORKPROXY_REQUIRE_BENCH_TOOLS") != "1",
        reason="slowhttptest is not installed (apt-get install slowhttptest); "
        "set FORKPROXY_REQUIRE_BENCH_TOOLS=1 to make this a failure",
    ),
]


async def test_slow_clients_are_cut_at_their_deadlines_and_service_stays_up(
    tmp_path: Path,
) -> None:
    results = await run(tmp_path, modes="HBX", length=15, connections=200, rate=50)
    print(render(results))
    assert [r.mode for r in results] == list(MODES)
    for r in results:
        assert r.probes >= 15 and r.probe_failures == 0, r
        assert r.lifetime is not None and r.lifetime <= r.deadline + 2.0, r
        assert r.lifetime >= r.deadline - 1.0, r  # closed by the deadline, not earlier
        assert r.ok, r.problems
