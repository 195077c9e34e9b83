"""vsphere backend benchmark on the vcsim harness (simulator figures, not a real vCenter):
per Instant Clone start, the SOAP calls on the start path by method and the time split
(clone task, guest IP wait, readiness), p50 over N clones; then the same with the guest IP
reported late, to show the waits cost the same calls however long they last (no polling).
Runs against the simulator `.ci/vcsim.sh` started (see loadtest/vcsim, in a checkout only).

    python -m loadtest coldstart vsphere --n 10        # writes results/vsphere_bench.json
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from forkproxy.backends.base import BackendContext
from forkproxy.backends.support.table import Table
from forkproxy.backends.vsphere import parse_config
from forkproxy.loadtest.coldstart import start_row, until_200
from forkproxy.loadtest.coldstart.contract import ColdStart, Command, Result
from forkproxy.loadtest.report.stats import percentile
from forkproxy.loadtest.report.table import render

if TYPE_CHECKING:
    from forkproxy.backends.vsphere.backend import VsphereBackend
    from forkproxy.loadtest import vcsim

PASSWORD_ENV = "FORKPROXY_BENCH_VCSIM_PASSWORD"


def backend_keys(sim: vcsim.Simulator, parent: str, prefix: str) -> dict[str, Any]:
    """The [backend] keys that clone `parent` on this simulator (sets the password env)."""
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


def make_backend(sim: vcsim.Simulator, parent: str) -> VsphereBackend:
    from forkproxy.backends.vsphere.backend import VsphereBackend  # imports pyVmomi: only when used

    # The death watch's own calls would be counted with the start path's.
    keys = {**backend_keys(sim, parent, "bench-"), "watch_deaths": False}
    table = Table.root({"backend": keys}).sub("backend")
    cfg = parse_config(table)
    if table.problems:
        raise SystemExit("\n".join(map(str, table.problems)))
    ctx = BackendContext(pool_name=f"bench-{uuid.uuid4().hex[:6]}", owner_id="bench")
    return VsphereBackend(cfg, ctx)


async def one_start(sim: vcsim.Simulator, backend: VsphereBackend) -> dict[str, Any]:
    sim.calls(reset=True)
    t0 = time.monotonic()
    inst = await backend.start(uuid.uuid4().hex[:10])
    t1 = time.monotonic()
    calls = sim.calls()  # the start path only: readiness is plain HTTP, stop comes later
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        await until_200(http, inst.endpoint.url + "/", t1 + 30, 0.01)
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
    """Raises vcsim.Unavailable (with the reason) when no simulator is running."""
    from forkproxy.loadtest import vcsim  # the harness is not in the wheel: in a checkout only

    sim = vcsim.find()
    vcsim.ensure_network()
    si = sim.connect()
    try:
        parent = vcsim.make_parent(si)
        try:
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
        finally:
            # The simulator is shared (started by .ci/vcsim.sh): leave it as it was found.
            sim.set_guest_ip_delay(0)
            vcsim.remove_vm(si, parent)
    finally:
        sim.disconnect(si)
    return {
        "what": "vsphere backend start path on govmomi 0.24.2 vcsim + forkproxy harness "
        "(simulator figures: container-backed VMs, not a real vCenter)",
        "machine": f"{os.cpu_count()} cores",
        "runs": results,
    }


class Vsphere(ColdStart):
    command = Command(
        "vsphere",
        "vsphere backend on the vcsim simulator: SOAP calls and time split",
        10,
        "clones per run",
        "vsphere_bench.json",
    )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--delays", default="0,2000", help="guest IP delays in ms, comma-separated (0,2000)"
        )

    async def series(self, n: int, work: Path) -> Result:
        return await _result(n, [0])

    async def measure(self, args: argparse.Namespace, work: Path) -> Result:
        return await _result(args.n, [int(d) for d in args.delays.split(",")])

    def table(self, result: Result) -> str:
        report = result.details
        headers = ["guest IP delay ms", "n", "clone task ms", "guest IP ms", "readiness ms"]
        headers += ["total ms", "SOAP calls"]
        rows = [
            [
                r["guest_ip_delay_ms"],
                r["n"],
                r["p50_clone_task_ms"],
                r["p50_guest_ip_ms"],
                r["p50_readiness_ms"],
                r["p50_total_ms"],
                "/".join(map(str, r["soap_calls_per_start"])),
            ]
            for r in report["runs"]
        ]
        return f"{report['what']}\n{render(headers, rows)}"

    def summary(self, result: Result) -> list[str]:
        lines = ["(p50 per start; SOAP calls: distinct per-start totals on the start path)"]
        for r in result.details["runs"]:
            by = ", ".join(f"{m} {c:g}" for m, c in r["calls_per_start_by_method"].items())
            lines.append(f"  delay {r['guest_ip_delay_ms']} ms: {by}")
        return lines


async def _result(n: int, delays: list[int]) -> Result:
    """run()'s samples as one cold-start row a guest IP delay; its report in the details."""
    try:
        from forkproxy.loadtest import vcsim  # the harness is not in the wheel: in a checkout only
    except ImportError:  # `from package import name` of an absent module says ImportError
        return Result(skipped=[("vsphere backend", "the vcsim harness is in a checkout only")])
    try:
        report = await run(n, delays)
    except vcsim.Unavailable as exc:
        return Result(skipped=[("vsphere backend", str(exc))])
    rows = []
    for r in report["runs"]:
        samples = [s["total_ms"] / 1000 for s in r["samples"]]
        # issue 14 asks for no regression here (8-9 per clone when it was filed)
        soap = "/".join(map(str, r["soap_calls_per_start"]))
        path = (
            "vsphere backend (vcsim simulator): Instant Clone start() -> first byte "
            f"({soap} SOAP calls per clone)"
        )
        if r["guest_ip_delay_ms"]:
            path += f", guest IP {r['guest_ip_delay_ms']} ms late"
        rows.append(start_row(path, samples, 0, len(samples)))  # one clone per sample
    command = f"python -m loadtest coldstart vsphere --n {n} --delays {','.join(map(str, delays))}"
    return Result(rows, [command + ", vcsim harness"], details=report)


BENCH = Vsphere()
