"""The replay suite's counts as a Markdown table (docs/HARDENING.md, "Replay against real
servers"):

    FORKPROXY_REPLAY_REPORT=/tmp/replay.jsonl .venv/bin/pytest tests/proxy/replay
    .venv/bin/python -m tests.proxy.replay.report /tmp/replay.jsonl

Each row: one server and family (requests: the hardening corpus and attacks; responses:
what the server's app is asked to get wrong), from the JSON lines runner.report wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render(rows: list[dict[str, object]]) -> str:
    out = [
        "| server | family | cases | forwarded | victims | requests the server parsed"
        " | upstream connections | seconds | failed cases |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        failed = ", ".join(f"`{c}`" for c in r["failed"]) or "none"  # type: ignore[attr-defined]
        out.append(
            f"| {r['server']} | {r['family']} | {r['cases']} | {r['forwarded']} | {r['victims']}"
            f" | {r['server_parsed']} | {r['connections']} | {r['seconds']} | {failed} |"
        )
    cases = sum(int(str(r["cases"])) for r in rows)
    seconds = sum(float(str(r["seconds"])) for r in rows)
    servers = len({r["server"] for r in rows})
    out.append(f"\n{cases} cases over {servers} servers in {seconds:.0f} s of replay.")
    return "\n".join(out)


if __name__ == "__main__":
    lines = Path(sys.argv[1]).read_text().splitlines()
    print(render([json.loads(line) for line in lines if line.strip()]))
