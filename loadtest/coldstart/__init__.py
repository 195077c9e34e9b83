"""Call the per-backend cold-start benchmarks (owned by the backend engineers) when present.

Each is optional: a missing module or an unavailable engine becomes a "skipped: reason" line.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

from loadtest.report.stats import percentile
from loadtest.sections.model import BenchContext, Section

# The row every cold-start series reports (extra keys stay in results.json).
ROW_KEYS = ("path", "n", "failures", "distinct_instances", "p50_ms", "p99_ms", "min_ms", "max_ms")


def start_row(path: str, ttfb: list[float], failures: int, distinct: int) -> dict[str, Any]:
    """One cold-start row from time-to-first-byte samples in seconds."""
    return {
        "path": path,
        "n": len(ttfb),
        "failures": failures,
        "distinct_instances": distinct,
        "p50_ms": percentile(ttfb, 50) * 1000,
        "p99_ms": percentile(ttfb, 99) * 1000,
        "min_ms": min(ttfb, default=math.nan) * 1000,
        "max_ms": max(ttfb, default=math.nan) * 1000,
    }


MODULES = {
    "process": "loadtest.coldstart.process",
    "docker": "loadtest.coldstart.docker",
    "vsphere": "loadtest.coldstart.vsphere",
}


def _vsphere_adapter(mod: Any) -> Any:
    """bench_vsphere exposes run(n, delays) (SOAP calls and time split per Instant Clone on
    vcsim); turn its samples into a cold-start row."""

    async def coldstart(n: int) -> dict[str, Any]:
        report = await mod.run(n, [0])
        samples = [s["total_ms"] / 1000 for r in report["runs"] for s in r["samples"]]
        path = "vsphere backend (vcsim simulator): Instant Clone start() -> first byte"
        row = start_row(path, samples, 0, len(samples))  # one clone per sample
        command = (
            f"python -m loadtest coldstart vsphere --n {n} (run(n, delays=[0])), vcsim harness"
        )
        return {"rows": [row], "commands": [command], "skipped": []}

    return coldstart


async def run_all(ctx: BenchContext, sec: Section, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for backend, modname in MODULES.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                sec.skip(f"{backend} backend", f"{modname} needs {e.name}")
            else:
                sec.skip(f"{backend} backend", f"{modname.replace('.', '/')}.py not present")
            continue
        fn = getattr(mod, "coldstart", None)
        if fn is None and backend == "vsphere" and hasattr(mod, "run"):
            fn = _vsphere_adapter(mod)
        if fn is None:
            sec.skip(f"{backend} backend", f"{modname} has no coldstart(n) function")
            continue
        try:
            # Backends that accept a work dir keep configs/logs under the bench's temp dir.
            wants_work = "work" in inspect.signature(fn).parameters
            result = fn(n, work=ctx.work / backend) if wants_work else fn(n)
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:  # an unavailable engine must not sink the whole benchmark
            sec.skip(f"{backend} backend", f"{type(e).__name__}: {e}")
            continue
        rows.extend(result.get("rows", []))
        sec.commands.extend(result.get("commands", []))
        for what, why in result.get("skipped", []):
            sec.skip(what, why)
    return rows
