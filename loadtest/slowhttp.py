"""slowhttptest against forkproxy: slowloris (-H), slow body (-B) and slow read (-X), each
bounded, with tight deadlines in the proxy's config and a probe loop that must keep
getting 200s. Slow connections must be closed near the configured deadlines.

    python -m loadtest slowhttp [--length 15] [--connections 200] [--rate 50] [--out DIR]

How long the proxy kept a slow connection is measured on the proxy's side: its
ESTABLISHED sockets on the listen port, sampled from /proc/net/tcp every 0.25 s. With
connections opened at a steady rate r, each living D seconds, half of them are open at
c/(2r) and half are closed D seconds later. slowhttptest's own CSV (one row per second)
is reported too, but it notices a close only when it next writes or reads: in slow-read
mode it reads 5 bytes a second from a full receive buffer, so it sees the proxy's reset
minutes late.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forkproxy.loadtest.report import table
from forkproxy.loadtest.run.proxy import FORK_BACKEND, forkproxy

# the proxy's deadlines under test ([server] keys) and the body rate grace in http1.py
DEADLINES: dict[str, Any] = {
    "header_timeout": "2s",
    "body_timeout": "2s",
    "body_min_rate": 1000,
    "send_timeout": "3s",
    "keepalive_timeout": "5s",
}
RATE_GRACE = 5.0
BIG = 64 * 1024 * 1024  # a response much larger than the socket buffers (slow read)


@dataclass
class Mode:
    flag: str
    name: str
    path: str
    interval: float  # slowhttptest -i (slow read: -n)
    deadline: float  # when the proxy should close a slow connection, seconds
    governs: str  # the config key behind `deadline`
    extra: list[str] = field(default_factory=list)


MODES = {
    "H": Mode("-H", "slowloris (slow headers)", "/healthz", 1, 2.0, "header_timeout", ["-x", "24"]),
    # one body byte group per second stays under body_timeout; body_min_rate ends it
    "B": Mode(
        "-B",
        "slow body (R-U-Dead-Yet)",
        "/count",
        1,
        RATE_GRACE,
        "body_min_rate",
        ["-x", "10", "-s", "8192"],
    ),
    "X": Mode(
        "-X",
        "slow read",
        f"/bytes?n={BIG}",
        1,
        3.0,
        "send_timeout",
        ["-k", "1", "-w", "1", "-y", "512", "-z", "5"],
    ),
}


@dataclass
class Result:
    mode: str
    name: str
    governs: str
    deadline: float
    lifetime: float | None  # estimated seconds the proxy kept a slow connection
    max_open: int  # proxy-side established connections, peak
    open_at_end: int
    tool_lifetime: float | None  # the same estimate from slowhttptest's CSV
    tool_closed: int
    connections: int
    slowhttptest_unavailable_seconds: int
    probes: int
    probe_failures: int
    probe_p99_ms: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Row:
    second: int
    closed: int
    pending: int
    connected: int
    available: int


def read_csv(path: Path) -> list[Row]:
    rows = []
    with path.open() as f:
        for rec in csv.DictReader(f):
            rows.append(
                Row(
                    int(rec["Seconds"]),
                    int(rec["Closed"]),
                    int(rec["Pending"]),
                    int(rec["Connected"]),
                    int(rec["Service Available"]),
                )
            )
    return rows


def established(port: int) -> int:
    """Sockets in ESTABLISHED state whose local port is `port` (the proxy's side).

    Read from /proc/net/tcp by hand: psutil.net_connections() would also map every socket to
    its process by walking all processes' fds, four times a second, on a shared box."""
    want = f":{port:04X}"
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1].endswith(want) and parts[3] == "01":
                n += 1
    return n


def server_lifetime(samples: list[tuple[float, int]], connections: int, rate: int) -> float | None:
    """Seconds from half of the connections opened (at the steady rate) to half closed."""
    half = connections / 2
    t_open = half / rate
    for t, n in samples:
        opened = min(connections, rate * t)
        if t > t_open and opened - n >= half:
            return t - t_open
    return None


async def sample_loop(port: int, stop: asyncio.Event, out: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        out.append((time.monotonic() - t0, established(port)))
        try:
            async with asyncio.timeout(0.25):
                await stop.wait()
        except TimeoutError:
            pass


def lifetime(rows: list[Row], connections: int) -> float | None:
    half = connections / 2
    opened = next((r.second for r in rows if r.connected + r.closed >= half), None)
    closed = next((r.second for r in rows if r.closed >= half), None)
    if opened is None or closed is None:
        return None
    return float(closed - opened)


async def _probe_once(host: str, port: int) -> tuple[bool, float]:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(3):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                data = await reader.read()
            finally:
                writer.close()
        return data.startswith(b"HTTP/1.1 200"), time.monotonic() - t0
    except (OSError, TimeoutError):
        return False, time.monotonic() - t0


async def probe_loop(
    host: str, port: int, stop: asyncio.Event, out: list[tuple[bool, float]]
) -> None:
    while not stop.is_set():
        out.append(await _probe_once(host, port))
        try:
            async with asyncio.timeout(0.25):
                await stop.wait()
        except TimeoutError:
            pass


async def run_mode(
    mode_key: str, url: str, out: Path, *, length: int, connections: int, rate: int
) -> Result:
    mode = MODES[mode_key]
    prefix = out / f"slowhttp-{mode_key}"
    argv = [
        "slowhttptest",
        mode.flag,
        "-c",
        str(connections),
        "-r",
        str(rate),
        "-l",
        str(length),
        "-p",
        "3",
        "-g",
        "-o",
        str(prefix),
        "-u",
        url + mode.path,
        *(["-n", str(int(mode.interval))] if mode_key == "X" else ["-i", str(int(mode.interval))]),
        *mode.extra,
    ]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    probes: list[tuple[bool, float]] = []
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(probe_loop(host, int(port), stop, probes))
        tg.create_task(sample_loop(int(port), stop, samples))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=out,
        )
        try:
            async with asyncio.timeout(length + 60):
                stdout, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            stop.set()
    (out / f"slowhttp-{mode_key}.log").write_bytes(stdout)
    rows = read_csv(prefix.with_suffix(".csv"))
    life = server_lifetime(samples, connections, rate)
    slack = 2.0
    lat = sorted(t for _, t in probes)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    problems = []
    if life is None:
        problems.append("the proxy did not close half of the slow connections")
    elif life > mode.deadline + slack:
        problems.append(f"connections lived ~{life:.0f}s, deadline {mode.deadline}s + {slack}s")
    failures = sum(1 for ok, _ in probes if not ok)
    if failures:
        problems.append(f"{failures} of {len(probes)} probes failed")
    if len(probes) < length:
        problems.append(f"only {len(probes)} probes in {length}s")
    unavailable = sum(1 for r in rows if r.available == 0)
    if unavailable:
        problems.append(f"slowhttptest saw the service unavailable for {unavailable}s")
    return Result(
        mode=mode_key,
        name=mode.name,
        governs=mode.governs,
        deadline=mode.deadline,
        lifetime=None if life is None else round(life, 2),
        max_open=max((n for _, n in samples), default=0),
        open_at_end=samples[-1][1] if samples else 0,
        tool_lifetime=lifetime(rows, connections),
        tool_closed=rows[-1].closed if rows else 0,
        connections=connections,
        slowhttptest_unavailable_seconds=unavailable,
        probes=len(probes),
        probe_failures=failures,
        probe_p99_ms=round(p99, 1),
        problems=problems,
    )


async def run(
    out: Path, *, modes: str = "HBX", length: int = 15, connections: int = 200, rate: int = 50
) -> list[Result]:
    if shutil.which("slowhttptest") is None:
        raise RuntimeError("slowhttptest is not installed (Debian: apt-get install slowhttptest)")
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    base = {
        "server": {"name": "slowhttp", **DEADLINES},
        # slow readers of the big response hold a slot until send_timeout: room for them
        "backend": dict(FORK_BACKEND),
    }
    pool = {"min_instances": 1, "max_instances": 40, "readiness_path": "/healthz"}
    results = []
    async with forkproxy(out, "slowhttp", base, pool) as proxy:
        for key in modes:
            results.append(
                await run_mode(
                    key, proxy.url, out, length=length, connections=connections, rate=rate
                )
            )
    (out / "slowhttp.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


def render(results: list[Result]) -> str:
    headers = [
        "mode",
        "governed by",
        "deadline",
        "kept by the proxy",
        "peak open",
        "slowhttptest saw closed",
        "probes ok",
        "probe p99",
    ]
    rows = [
        [
            r.name,
            f"`{r.governs}`",
            f"{r.deadline:.0f} s",
            "-" if r.lifetime is None else f"~{r.lifetime:.1f} s",
            r.max_open,
            f"{r.tool_closed}/{r.connections}",
            f"{r.probes - r.probe_failures}/{r.probes}",
            f"{r.probe_p99_ms:.0f} ms",
        ]
        for r in results
    ]
    return table.render(headers, rows, markdown=True)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--modes", default="HBX", help="any of H, B, X")
    ap.add_argument("--length", type=int, default=15, help="seconds per mode (slowhttptest -l)")
    ap.add_argument("--connections", type=int, default=200, help="slowhttptest -c")
    ap.add_argument("--rate", type=int, default=50, help="connections per second (-r)")
    ap.add_argument("--out", type=Path, default=None, help="where CSV/HTML/JSON go")


def main(args: argparse.Namespace) -> int:
    out = args.out or Path(tempfile.mkdtemp(prefix="slowhttp-"))
    results = asyncio.run(
        run(
            out,
            modes=args.modes,
            length=args.length,
            connections=args.connections,
            rate=args.rate,
        )
    )
    print(render(results))
    print(f"\nreports in {out}")
    bad = [f"{r.mode}: {p}" for r in results for p in r.problems]
    for p in bad:
        print("FAIL", p, file=sys.stderr)
    return 1 if bad else 0
