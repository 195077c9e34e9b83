"""vsphere backend benchmark on the vcsim harness (simulator figures, not a real vCenter):
per Instant Clone start, the SOAP calls on the start path by method and the time split
(clone task, guest IP wait, readiness), p50 over N clones; then the same with the guest IP
reported late, to show the waits cost the same calls however long they last (no polling).

    python -m loadtest.bench_vsphere --n 10            # writes results/vsphere_bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from backends.base import BackendContext
from backends.support.table import Table
from backends.vsphere import create_backend, parse_config
from backends.vsphere.backend import VsphereBackend
from loadtest.stats import percentile
from tests.backends.vsphere import harness

REPO = Path(__file__).resolve().parents[1]
PASSWORD_ENV = "FORKPROXY_BENCH_VCSIM_PASSWORD"


def backend_keys(sim: harness.Vcsim, parent: str, prefix: str) -> dict[str, Any]:
    """The [backend] keys that clone `parent` on this harness (sets the password env)."""
    os.environ[PASSWORD_ENV] = sim.password
    return {
        "host": sim.host,
        "port": sim.port,
        "user": sim.user,
        "password_env": PASSWORD_ENV,
        "ca_file": sim.ca_file,
        "parent_vm": parent,
        "name_prefix": prefix,
    }


def make_backend(sim: harness.Vcsim, parent: str) -> VsphereBackend:
    # The death watch's own calls would be counted with the start path's.
    keys = {**backend_keys(sim, parent, "bench-"), "watch_deaths": False}
    table = Table.root({"backend": keys}).sub("backend")
    cfg = parse_config(table)
    if table.problems:
        raise SystemExit("\n".join(map(str, table.problems)))
    ctx = BackendContext(pool_name=f"bench-{uuid.uuid4().hex[:6]}", owner_id="bench")
    return create_backend(cfg, ctx)


async def ready(url: str, deadline: float) -> None:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready")
            await asyncio.sleep(0.01)


async def one_start(sim: harness.Vcsim, backend: VsphereBackend) -> dict[str, Any]:
    sim.calls(reset=True)
    t0 = time.monotonic()
    inst = await backend.start(uuid.uuid4().hex[:10])
    t1 = time.monotonic()
    calls = sim.calls()  # the start path only: readiness is plain HTTP, stop comes later
    await ready(inst.endpoint.url + "/", t1 + 30)
    t2 = time.monotonic()
    await backend.stop(inst, "bench")
    return {
        "clone_task_ms": inst.phases["clone_task"] * 1000,
        "guest_ip_ms": inst.phases["guest_ip"] * 1000,
        "readiness_ms": (t2 - t1) * 1000,
        "total_ms": (t2 - t0) * 1000,
        "soap_calls": sum(calls.values()),
        "calls": calls,
    }


def summarize(delay_ms: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    def p50(key: str) -> float:
        return round(percentile([s[key] for s in samples], 50), 1)

    methods: Counter[str] = Counter()
    for s in samples:
        methods.update(s["calls"])
    totals = sorted({s["soap_calls"] for s in samples})
    return {
        "guest_ip_delay_ms": delay_ms,
        "n": len(samples),
        "p50_clone_task_ms": p50("clone_task_ms"),
        "p50_guest_ip_ms": p50("guest_ip_ms"),
        "p50_readiness_ms": p50("readiness_ms"),
        "p50_total_ms": p50("total_ms"),
        "soap_calls_per_start": totals,  # distinct per-start totals seen
        "calls_per_start_by_method": {
            m: round(c / len(samples), 2) for m, c in sorted(methods.items())
        },
        "samples": samples,
    }


async def run(n: int, delays: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-vcsim-") as tmp:
        sim = harness.start(Path(tmp))
        si = sim.connect()
        try:
            parent = harness.make_parent(si)
            backend = make_backend(sim, parent)
            await backend.prepare()
            try:
                await one_start(sim, backend)  # warm-up: first docker run, TLS, caches
                results = []
                for delay in delays:
                    sim.set_guest_ip_delay(delay)
                    samples = [await one_start(sim, backend) for _ in range(n)]
                    results.append(summarize(delay, samples))
            finally:
                await backend.aclose()
            harness.remove_vm(si, parent)
        finally:
            sim.stop()
    return {
        "what": "vsphere backend start path on govmomi 0.24.2 vcsim + forkproxy harness "
        "(simulator figures: container-backed VMs, not a real vCenter)",
        "machine": f"{os.cpu_count()} cores",
        "runs": results,
    }


def print_table(report: dict[str, Any]) -> None:
    print(report["what"])
    head = ("guest IP delay", "n", "clone task", "guest IP", "readiness", "total", "SOAP calls")
    print("{:>15} {:>3} {:>11} {:>9} {:>10} {:>9} {:>11}".format(*head))
    for r in report["runs"]:
        print(
            f"{r['guest_ip_delay_ms']:>12} ms {r['n']:>3} {r['p50_clone_task_ms']:>8.1f} ms"
            f" {r['p50_guest_ip_ms']:>6.1f} ms {r['p50_readiness_ms']:>7.1f} ms"
            f" {r['p50_total_ms']:>6.1f} ms {'/'.join(map(str, r['soap_calls_per_start'])):>11}"
        )
    print("(p50 per start; SOAP calls: distinct per-start totals on the start path)")
    for r in report["runs"]:
        by = ", ".join(f"{m} {c:g}" for m, c in r["calls_per_start_by_method"].items())
        print(f"  delay {r['guest_ip_delay_ms']} ms: {by}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="clones per run (default 10)")
    ap.add_argument(
        "--delays", default="0,2000", help="guest IP delays in ms, comma-separated (0,2000)"
    )
    ap.add_argument("--out", default=str(REPO / "results/vsphere_bench.json"))
    args = ap.parse_args(argv)
    try:
        report = asyncio.run(run(args.n, [int(d) for d in args.delays.split(",")]))
    except harness.Unavailable as exc:
        print(f"bench_vsphere: vcsim not available: {exc} (run .ci/vcsim.sh)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
