"""Section 5, memory: PSS per instance (psutil: /proc/PID/smaps_rollup) with 20 instances of
the example app, process backend in fork mode (copy-on-write from a template) vs exec mode."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import psutil

from forkproxy.loadtest.report.stats import live, ratio
from forkproxy.loadtest.run.proxy import EXEC_BACKEND, FORK_BACKEND, app_config, forkproxy
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

N_INSTANCES = 20


def pss_kib(pid: int) -> int | None:
    """Proportional set size: shared pages split between the processes sharing them
    (psutil reads /proc/PID/smaps_rollup). None once the process is gone."""
    try:
        return int(psutil.Process(pid).memory_full_info().pss) // 1024
    except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
        return None


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, their children, ...); [] once pid is gone."""
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def instance_pids(insts: list[Mapping[str, Any]]) -> list[int]:
    pids = []
    for i in insts:
        meta = i.get("meta") or {}
        raw = meta.get("pid") if isinstance(meta, Mapping) else None
        if raw is not None and str(raw).isdigit():
            pids.append(int(raw))
    return pids


def measure(proxy_pid: int, insts: list[Mapping[str, Any]]) -> dict[str, Any]:
    pids = instance_pids(insts)
    source = "instance meta pid"
    if len(pids) < len(insts):
        # No pids in /instances: fall back to the proxy's process tree (includes any template).
        pids, source = descendants(proxy_pid), "proxy process tree"
    per = {p: pss_kib(p) for p in pids}
    values = [v for v in per.values() if v is not None]
    others = [p for p in descendants(proxy_pid) if p not in per]
    other_pss = [v for v in (pss_kib(p) for p in others) if v is not None]
    return {
        "pid_source": source,
        "instances": len(values),
        "mean_pss_mib": sum(values) / len(values) / 1024 if values else float("nan"),
        "total_pss_mib": sum(values) / 1024,
        "proxy_pss_mib": (pss_kib(proxy_pid) or 0) / 1024,
        "other_children": len(other_pss),  # e.g. the fork template
        "other_children_pss_mib": sum(other_pss) / 1024,
        # What each instance really costs once the template it shares is paid for too.
        "mean_with_template_mib": (sum(values) + sum(other_pss)) / len(values) / 1024
        if values
        else float("nan"),
    }


async def run(ctx: BenchContext) -> Section:
    sec = Section("memory", f"Memory: PSS per instance, {N_INSTANCES} instances, fork vs exec")
    pool = {
        "min_instances": N_INSTANCES,
        "max_instances": N_INSTANCES,
        "max_starting": 4,
        "idle_ttl": "10m",
        "start_timeout": "60s",
    }
    results: dict[str, dict[str, Any]] = {}
    for label, backend in (("fork", FORK_BACKEND), ("exec", EXEC_BACKEND)):
        say(f"  memory: {N_INSTANCES} instances, process {label}")
        try:
            async with forkproxy(ctx.work, f"mem-{label}", app_config(backend), pool) as fp:
                sec.commands.append(f"memory ({label}): {fp.command} with {fp.settings}")
                insts = live(await fp.instances())
                await asyncio.sleep(1.0)  # let the last starts finish their imports/allocations
                results[label] = await asyncio.to_thread(measure, fp.proc.pid, insts)
        except (RuntimeError, TimeoutError) as e:
            sec.fail(f"memory, process {label}", e)
    rows = [
        [
            label,
            r["instances"],
            r["mean_pss_mib"],
            r["mean_with_template_mib"],
            r["total_pss_mib"],
            r["other_children_pss_mib"],
            r["proxy_pss_mib"],
            r["pid_source"],
        ]
        for label, r in results.items()
    ]
    sec.tables.append(
        Table(
            [
                "mode",
                "instances",
                "mean PSS MiB",
                "mean incl. template MiB",
                "sum PSS MiB",
                "template/other MiB",
                "proxy MiB",
                "pids from",
            ],
            rows,
        )
    )
    if "fork" in results and "exec" in results:
        r = ratio(results["fork"]["mean_pss_mib"], results["exec"]["mean_pss_mib"])
        r2 = ratio(
            results["fork"]["mean_with_template_mib"], results["exec"]["mean_with_template_mib"]
        )
        sec.tables.append(
            Table(
                ["ratio", "value"],
                [["fork / exec mean PSS", r], ["fork / exec mean PSS incl. template", r2]],
            )
        )
    sec.notes.append(
        "PSS divides each shared page among the processes mapping it, so the sum over "
        "instances is their real footprint; fork-mode children share the template's "
        "imported code and heap copy-on-write."
    )
    if "fork" in results and "exec" in results:
        fork, exe = results["fork"], results["exec"]
        sec.headline = (
            f"Memory: with {N_INSTANCES} instances a fork-mode instance costs "
            f"{fork['mean_with_template_mib']:.1f} MiB PSS (template share included) vs "
            f"{exe['mean_pss_mib']:.1f} MiB in exec mode "
            f"({ratio(fork['mean_with_template_mib'], exe['mean_pss_mib']):.0%})."
        )
    sec.data = {"pool": pool, "results": results}
    return sec
