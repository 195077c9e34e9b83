"""Issue 21: forkproxy's data path judged against the real servers users run behind it
(servers.py), not against a second parser. Each server sits behind a recording tee
(tee.py) as the proxy's one instance, and answers every request with a marker saying
what it parsed (marker.py). For every case (cases.py):

- the server parsed only requests the proxy sent as requests: per upstream connection,
  each X-Replay-Seen in what it wrote is, in order, one request h11 frames in what the
  proxy sent it (same method, id, body length and digest); a smuggled one fails;
- every client gets its own answers only: the attacker nothing with another's id, and
  after each forwarded case three victims (one at once, while a late body may still be
  on its way, then two together) each get exactly their own answer;
- what a client gets reads as HTTP (h11) with statuses in 100-599, no more answers than
  it asked for; a 1xx with a body or a bad status is the final answer as sent or a 502.

Failures are collected per case and reported together, one test per server and family
(bounded: servers run once per module, cases one after another on a few connections)."""

from __future__ import annotations

import pytest

from tests.proxy.replay.cases import raw_cases, request_cases, response_cases
from tests.proxy.replay.runner import Lab, report, run_family
from tests.proxy.replay.servers import RAW, SERVERS

pytestmark = pytest.mark.asyncio(loop_scope="module")
NAMES = [s.name for s in SERVERS]


def _verdict(problems: dict[str, list[str]]) -> str:
    lines = [f"{len(problems)} case(s) failed:"]
    for case, whys in sorted(problems.items()):
        lines += [f"- {case}:"] + [f"    {w}" for w in whys[:3]]
    return "\n".join(lines)


@pytest.mark.parametrize("lab", NAMES, indirect=True, scope="module")
async def test_requests_reach_the_server_as_framed_and_answers_stay_with_their_client(
    lab: Lab,
) -> None:
    out = await run_family(lab, "q", request_cases())
    report(lab, "requests", out)
    assert out.forwarded > 0 and out.server_parsed >= out.forwarded
    assert not out.problems, _verdict(out.problems)


@pytest.mark.parametrize("lab", [*NAMES, RAW.name], indirect=True, scope="module")
async def test_misbehaving_answers_never_reach_another_client(lab: Lab) -> None:
    cases = raw_cases() if lab.server == RAW.name else response_cases()
    out = await run_family(lab, "r", cases)
    report(lab, "responses", out)
    assert out.forwarded == len(cases)
    assert not out.problems, _verdict(out.problems)
