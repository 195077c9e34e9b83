"""Running replay cases through a proxy whose instance is a tee in front of one real
server, and judging them (the invariants are in the module docstring of test_replay.py)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.proxy.hardening.strict import Scripted, judge
from tests.proxy.replay.cases import Case, raw_script
from tests.proxy.replay.marker import ID_HEADER
from tests.proxy.replay.wire import frame, ids, server_seen, talk, unframed

LIMITS = {  # the proxy's [server] deadlines: a case that waits ends in seconds
    "header_timeout": "2s",
    "body_timeout": "2s",
    "keepalive_timeout": "5s",
    "upstream_header_timeout": "2s",
}
VICTIMS = 3  # clients right after each forwarded case
SETTLE = 0.05  # for a server's late bytes to reach the pooled connection first
RAW_PAUSE = 0.2  # the raw server's pause between the parts of its answer


class Recording:
    """The tee's files: per upstream connection, the bytes of each direction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sizes: dict[Path, int] = {}

    def connections(self) -> list[tuple[bytes, bytes]]:
        out = []
        for c2s in sorted(self.root.glob("*.c2s")):
            s2c = c2s.with_suffix(".s2c")
            out.append((c2s.read_bytes(), s2c.read_bytes() if s2c.exists() else b""))
        return out

    def sent_since(self) -> bytes:
        """What the proxy sent upstream since the last call."""
        new = b""
        for path in self.root.glob("*.c2s"):
            size = path.stat().st_size
            old = self._sizes.get(path, 0)
            if size > old:
                with path.open("rb") as f:
                    f.seek(old)
                    new += f.read(size - old)
                self._sizes[path] = size
        return new


@dataclass
class Lab:
    server: str
    port: int  # the proxy's
    recording: Recording | None  # None: no tee (real fork mode), the client side only
    scripted: Scripted | None = None  # the raw server's script directory


@dataclass
class Outcome:
    cases: int = 0
    forwarded: int = 0
    victims: int = 0
    server_parsed: int = 0
    connections: int = 0
    seconds: float = 0.0
    problems: dict[str, list[str]] = field(default_factory=dict)
    slow: list[str] = field(default_factory=list)  # cases over 0.5 s (a wait on a timeout)

    def fail(self, case: str, why: str) -> None:
        self.problems.setdefault(case, []).append(why)


def _client_problem(data: bytes, methods: list[str], closed: bool) -> str | None:
    """Bytes a client cannot read as its answers, a status outside 100-599, or an answer
    beyond those it asked for that is not an error (the proxy's 400 for bytes h11 did not
    frame as a request is fine; a second 200 is someone's answer)."""
    j = judge(data, [*methods, "GET", "GET", "GET"])
    if j.error and closed and "complete message body" in j.error:
        pass  # the server closed mid-body (e.g. too many bytes for h11): cut, not mixed up
    elif j.error and len(j.answers) <= len(methods):
        return f"h11 cannot read what the client got ({j.error}): {data[:200]!r}"
    for a in j.answers:
        for s in [*a.informational, a.status]:
            if not 100 <= s <= 599:
                return f"status {s} reached the client: {data[:200]!r}"
    if any(a.status < 400 for a in j.answers[len(methods) :]):
        return f"more than the {len(methods)} answer(s) asked for: {data[:300]!r}"
    return None


async def victim(lab: Lab, vid: str) -> str | None:
    wire = b"GET /v/seen=%b HTTP/1.1\r\nHost: t\r\n%b: %b\r\n\r\n" % (
        vid.encode(),
        ID_HEADER.encode(),
        vid.encode(),
    )
    t = await talk(lab.port, wire, ["GET"], timeout=5)
    got = ids(t.data)
    foreign = sorted({i for i in got if i != vid})
    if foreign:
        return f"victim {vid} got bytes meant for {foreign}: {t.data[:300]!r}"
    answers = t.judged(["GET"]).answers
    if [a.status for a in answers] != [200] or vid not in got:
        return f"victim {vid} did not get its own answer: {t.data[:300]!r}"
    return None


async def run_case(lab: Lab, prefix: str, case: Case, out: Outcome) -> None:
    wire = case.bytes_for(prefix)
    if case.script:
        assert lab.scripted is not None
        _, parts = raw_script(case.script, f"{prefix}-m")
        lab.scripted.script(f"{prefix}-m", *parts, pause=RAW_PAUSE)
    # judged as plain messages, as the proxy forwards them (h11 would end at a CONNECT's 2xx)
    methods = ["GET" if r.method == "CONNECT" else r.method for r in frame(wire)[0]]
    if lab.recording is not None:
        lab.recording.sent_since()
    t = await talk(lab.port, wire, methods, timeout=3)
    out.cases += 1
    foreign = sorted({i for i in ids(t.data) if not (i.startswith(prefix) or i == "anon")})
    if foreign:
        out.fail(case.name, f"the client got bytes meant for {foreign}: {t.data[:300]!r}")
    why = _client_problem(t.data, methods, t.closed)
    if why:
        out.fail(case.name, why)
    if case.script and case.script.startswith(("1xx", "status")):
        _check_raw_final(t.data, methods, prefix, case, out)
    if lab.recording is not None and prefix.encode() not in lab.recording.sent_since():
        return  # refused by the proxy: nothing reached the server
    out.forwarded += 1
    # one victim at once (late bytes still on their way reach whoever reuses the
    # connection), then a few together once a server's late bytes have arrived
    results = [await victim(lab, f"{prefix}v0")]
    await asyncio.sleep(SETTLE + (RAW_PAUSE if case.script else 0))
    results += await asyncio.gather(*(victim(lab, f"{prefix}v{k}") for k in range(1, VICTIMS)))
    out.victims += VICTIMS
    for r in results:
        if r:
            out.fail(case.name, r)


def _check_raw_final(
    data: bytes, methods: list[str], prefix: str, case: Case, out: Outcome
) -> None:
    """A 1xx with a body or a status outside 100-599: the client gets the final answer
    exactly as sent, or a 502; nothing of the 1xx's body."""
    j = judge(data, methods)
    want = b"seen=%b-m" % prefix.encode()
    ok = [a for a in j.answers if a.status == 502 or (a.status == 200 and a.body == want)]
    if len(j.answers) != 1 or len(ok) != 1:
        out.fail(case.name, f"wanted exactly a 502 or the final answer {want!r}: {data[:300]!r}")


def check_server_side(lab: Lab, family: str, names: dict[str, str], out: Outcome) -> None:
    """Per upstream connection, everything the server parsed was a request the proxy sent
    as one; problems are filed under the case their ids belong to. Counts are this
    family's: its requests the server parsed, the connections that carried them."""
    assert lab.recording is not None
    for c2s, s2c in lab.recording.connections():
        mine = [r for r in server_seen(s2c) if r.rid.startswith(family)]
        out.connections += bool(mine)
        out.server_parsed += len(mine)
        for got, why in unframed(c2s, s2c):
            owner = names.get(got.rid[:4])
            if owner is not None:
                out.fail(owner, "server side: " + why)
            elif not got.rid.startswith(("q", "r")):  # not another family's
                out.fail(f"(request id {got.rid})", "server side: " + why)


async def run_family(lab: Lab, family: str, cases: list[Case]) -> Outcome:
    out = Outcome()
    t0 = time.monotonic()
    names = {}
    for i, case in enumerate(cases):
        prefix = f"{family}{i:03d}"
        names[prefix] = case.name
        t1 = time.monotonic()
        await run_case(lab, prefix, case, out)
        if time.monotonic() - t1 > 0.5:
            out.slow.append(f"{case.name} {time.monotonic() - t1:.1f}s")
    await asyncio.sleep(0.3)  # a server's last answers reach the tee's record
    if lab.scripted is None and lab.recording is not None:
        check_server_side(lab, family, names, out)
    out.seconds = time.monotonic() - t0
    return out


def report(lab: Lab, family: str, out: Outcome) -> None:
    """Print the counts; append them to $FORKPROXY_REPLAY_REPORT (JSON lines) if set,
    which `python -m tests.proxy.replay.report` turns into docs/HARDENING.md's table."""
    row = {
        "server": lab.server,
        "family": family,
        "cases": out.cases,
        "forwarded": out.forwarded,
        "victims": out.victims,
        "server_parsed": out.server_parsed,
        "connections": out.connections,
        "seconds": round(out.seconds, 2),
        "failed": sorted(out.problems),
        "slow": out.slow,
    }
    print(json.dumps(row))
    path = os.environ.get("FORKPROXY_REPLAY_REPORT")
    if path:
        with Path(path).open("a") as f:
            f.write(json.dumps(row) + "\n")
