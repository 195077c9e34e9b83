"""A fork that dies right after it starts is a failed start: starts back off, clients
get 503 at once, and the log shows the traceback once, then counts the repeats."""

from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.conftest import ProxyProcess
from tests.faults.helpers import config, metric

CRASHING = {
    "post_fork": (
        config(backend='post_fork = "tests.faults.apps:crash"\nstop_grace = "1s"'),
        "RuntimeError: post_fork cannot reach its database",
    ),
    "asgi_lifespan": (
        config(app="tests.faults.apps:failing_startup_app"),
        "No module named 'faults_missing_module'",
    ),
}


async def _hammer(p: ProxyProcess, secs: float) -> list[tuple[int, str, float]]:
    """One client after another for `secs`: (status, body, seconds) of each."""
    out = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        end = time.monotonic() + secs
        while time.monotonic() < end:
            t0 = time.monotonic()
            async with s.get(p.url + "/") as r:
                out.append((r.status, await r.text(), time.monotonic() - t0))
    return out


@pytest.mark.parametrize("fault", sorted(CRASHING))
async def test_a_crash_looping_app_backs_off_answers_503_and_logs_one_traceback(
    proxy_process: Callable[[str], ProxyProcess], fault: str
) -> None:
    if fault == "asgi_lifespan":
        pytest.importorskip("starlette")
    text, error = CRASHING[fault]
    p = proxy_process(text)
    await p.start()
    answers = await _hammer(p, 3.0)
    starts = await metric(p, "forkproxy_instance_starts_total")
    forks = sum(starts.values())
    statuses = {status for status, _, _ in answers}
    assert statuses == {503}, answers[:5]
    assert "no instance could be started" in answers[-1][1]
    # once start_retries failed, new clients are answered at once, not after the backoff
    assert max(secs for _, _, secs in answers[len(answers) // 2 :]) < 1.0, answers
    assert starts.get('forkproxy_instance_starts_total{result="ok"}', 0) == 0, starts
    assert 1 <= forks <= 10, starts  # the backoff bounds them (on main: ~88/s)
    log = p.log.read_text()
    assert log.count("Traceback (most recent call last)") == 1, log[-3000:]
    assert error in log, log[-3000:]
    assert "failed again" in log
