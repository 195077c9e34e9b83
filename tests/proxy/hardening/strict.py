"""Judging what a client received with h11, a strict parser other than the proxy's
llhttp, and driving the scripted instance (scripted_instance.py) behind a proxy."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from tests.conftest import run_proxy

HERE = Path(__file__).resolve().parent


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    informational: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name.lower()), None)


@dataclass
class Judged:
    answers: list[Answer]
    error: str | None  # h11 refused the bytes (a desync, garbage)
    rest: bool  # bytes left after the last answer (e.g. after a close-delimited one)


def judge(data: bytes, methods: list[str], *, version: str = "1.1") -> Judged:
    """The responses in `data` to requests sent with `methods`, in order, as h11 reads
    them (HEAD answers have no body, 1xx are collected on the answer they precede)."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")  # what was received ends here (closes a close-delimited body)
    out: list[Answer] = []
    info: list[int] = []
    for method in methods:
        try:
            conn.send(
                h11.Request(
                    method=method, target="/", headers=[("Host", "t")], http_version=version
                )
            )
            conn.send(h11.EndOfMessage())
            cur: Answer | None = None
            while True:
                if not out and not data:
                    return Judged(out, None, False)
                ev = conn.next_event()
                if isinstance(ev, h11.InformationalResponse):
                    info.append(ev.status_code)
                elif isinstance(ev, h11.Response):
                    cur = Answer(ev.status_code, list(ev.headers), informational=info)
                    info = []
                elif isinstance(ev, h11.Data):
                    assert cur is not None
                    cur.body += bytes(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    assert cur is not None
                    out.append(cur)
                    break
                else:  # NEED_DATA (truncated) or ConnectionClosed: no more answers
                    return Judged(out, None, False)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return Judged(out, None, bool(conn.trailing_data[0]))
            conn.start_next_cycle()
        except h11.ProtocolError as exc:
            if cur is None and "ConnectionClosed" in str(exc):
                # closed with no byte of this answer (a 1xx at most): no answer, no desync
                return Judged(out, None, False)
            return Judged(out, str(exc), True)
    left = conn.next_event()
    return Judged(
        out,
        None,
        left not in (h11.NEED_DATA, h11.PAUSED) and not isinstance(left, h11.ConnectionClosed),
    )


class Scripted:
    """The scripted instance's directory: scripts to write, requests it received."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def script(self, name: str, *parts: bytes, **opts: Any) -> str:
        (self.root / f"{name}.json").write_text(
            json.dumps({"parts": [p.hex() for p in parts], **opts})
        )
        return f"/s/{name}"

    def requests(self) -> list[dict[str, Any]]:
        path = self.root / "requests.jsonl"
        if not path.exists():
            return []
        got = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in got if r.get("target") != "/ready"]

    def targets(self) -> list[str]:
        return [r.get("target", "<error>") for r in self.requests()]


def scripted(root: Path, **tables: dict[str, Any]) -> Any:
    """A proxy in front of scripted_instance.py (exec backend), one warm instance."""
    cmd = [sys.executable, str(HERE / "scripted_instance.py"), "{port}", str(root)]
    pool = {
        "readiness_path": "/ready",
        "min_instances": 1,
        "max_instances": 1,
        **tables.pop("pool", {}),
    }
    return run_proxy(backend={"mode": "exec", "command": cmd}, pool=pool, **tables)
