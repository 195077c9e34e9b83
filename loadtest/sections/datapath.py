"""Section 1, the data path: fixed-concurrency load direct to one warm app instance, through
forkproxy (fork backend, one warm instance) and through its peers (nginx, HAProxy, Go's
httputil.ReverseProxy) in front of the same app, in interleaved rounds at 1, 32 and 256
connections; then where forkproxy's CPU goes at 32 (profile.py)."""

from __future__ import annotations

import contextlib
import shlex
from math import nan
from typing import Any

import aiohttp

from forkproxy.loadtest.load.httpload import LoadResult, run_load, wrk_path
from forkproxy.loadtest.report.stats import ratio
from forkproxy.loadtest.run import native, peers
from forkproxy.loadtest.run.procs import PYTHON, running_on_free_port
from forkproxy.loadtest.run.proxy import FORK_BACKEND, app_config, forkproxy
from forkproxy.loadtest.run.tools import ensure_debian_package
from forkproxy.loadtest.sections import profile
from forkproxy.loadtest.sections.model import BenchContext, Section, Table, say

CONNECTIONS = 32  # the headline figure
LEVELS = (1, CONNECTIONS, 256)  # c=1: added latency; c=256: many connections on one loop
PATH = "/"
COMPILED = "forkproxy-mypyc"  # the optional compiled build (proxy/http/native.py)


def median_run(runs: list[LoadResult], by_latency: bool = False) -> LoadResult:
    """The middle run: by req/s, or by p50 (at one connection the latency is the figure)."""
    ordered = sorted(runs, key=(lambda r: r.p50_ms) if by_latency else (lambda r: r.rps))
    return ordered[len(ordered) // 2]


async def _tools(ctx: BenchContext, sec: Section, require: bool) -> list[peers.Peer]:
    """The peers that can run here; a missing one is skipped with the reason (or, with
    FORKPROXY_REQUIRE_BENCH_TOOLS=1, fails the section)."""
    no_wrk = await ensure_debian_package("wrk", "wrk", ctx.install_tools)
    missing = {p.name: await peers.available(p, ctx.install_tools) for p in peers.PEERS}
    why = [w for w in (no_wrk, *missing.values()) if w]
    if require and why:
        raise RuntimeError(f"FORKPROXY_REQUIRE_BENCH_TOOLS=1 but {'; '.join(why)}")
    if no_wrk:
        sec.skip("wrk", f"{no_wrk}; measured with the aiohttp closed-loop client instead")
    for name, reason in missing.items():
        if reason:
            sec.skip(name, reason)
    return [p for p in peers.PEERS if not missing[p.name]]


async def run(ctx: BenchContext, require_tools: bool = False) -> Section:
    sec = Section("datapath", "Data path: requests/s and latency at fixed concurrency")
    # Seconds per run by connection count: one connection needs fewer for a stable p50.
    seconds = {1: ctx.pick(3.0, 1.0), CONNECTIONS: ctx.pick(5.0, 1.0), 256: ctx.pick(5.0, 1.0)}
    usable = await _tools(ctx, sec, require_tools)
    use_wrk = wrk_path() is not None
    rounds = ctx.pick(3, 1)
    targets: dict[str, str] = {}
    pool = {
        # One instance with room for every connection: the same work as "direct", plus the hop.
        "min_instances": 1,
        "max_instances": 1,
        "max_concurrency": max(LEVELS) * 2,
        "target_concurrency": float(max(LEVELS) * 2),
        "idle_ttl": "10m",
    }
    runs: dict[tuple[str, int], list[LoadResult]] = {}
    prof: profile.Profile | str | None = None
    async with contextlib.AsyncExitStack() as stack:

        def app_argv(port: int) -> list[str]:
            return [PYTHON, "-m", "examples.app", "--port", str(port)]

        _, app_port = await stack.enter_async_context(
            running_on_free_port("app", app_argv, ctx.work / "logs")
        )
        sec.commands.append("app: " + shlex.join(["python", *app_argv(app_port)[1:]]))
        targets["direct"] = f"http://127.0.0.1:{app_port}{PATH}"
        for peer in usable:
            try:
                url, command = await peers.start(peer, stack, ctx.work, app_port)
            except (RuntimeError, TimeoutError, OSError) as e:
                if require_tools:
                    raise
                sec.skip(peer.name, f"did not start: {e}")
                continue
            sec.commands.append(command)
            targets[peer.name] = url + PATH
        fp = None
        try:
            if (why := native.pure_checkout()) is not None:
                raise RuntimeError(why)
            fp = await stack.enter_async_context(
                forkproxy(ctx.work, "datapath", app_config(FORK_BACKEND), pool)
            )
            sec.commands.append(f"forkproxy: {fp.command} with {fp.settings}")
            targets["forkproxy"] = fp.url + PATH
        except (RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as e:
            sec.fail("forkproxy", e)
        await _compiled(ctx, sec, stack, pool, targets)

        # Rounds interleave the targets so a noisy neighbour on the box hits them all alike;
        # the order rotates each round so no target always runs right after the same one.
        names = list(targets)
        for i in range(rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for c in LEVELS:
                for name in order:
                    say(f"  round {i + 1}/{rounds}: {name}, {c} connections, {seconds[c]:g}s")
                    result = await run_load(targets[name], c, seconds[c], use_wrk)
                    runs.setdefault((name, c), []).append(result)
        if fp is not None:
            # after the rounds, so the sampler's cost never shows in their figures
            prof = await profile.measure(fp.proc.pid, targets["forkproxy"], CONNECTIONS, use_wrk)
    by_level = {
        c: {n: median_run(runs[n, c], c == 1) for n in targets if runs.get((n, c))} for c in LEVELS
    }
    _report(sec, by_level, seconds, rounds)
    if prof is not None:
        profile.report(sec, prof)
    sec.data = {
        "connections": CONNECTIONS,
        "levels": list(LEVELS),
        "seconds": {str(c): s for c, s in seconds.items()},
        "pool": pool,
        "rounds": rounds,
        "results": {k: v.as_dict() for k, v in by_level[CONNECTIONS].items()},
        "by_connections": {
            str(c): {k: v.as_dict() for k, v in res.items()} for c, res in by_level.items()
        },
        "all_runs": {f"{n}@{c}": [r.as_dict() for r in v] for (n, c), v in runs.items()},
        "ratios": _ratios(by_level),
        "added_p50_us": _added_p50_us(by_level[1]),
    }
    return sec


async def _compiled(
    ctx: BenchContext,
    sec: Section,
    stack: contextlib.AsyncExitStack,
    pool: dict[str, Any],
    targets: dict[str, str],
) -> None:
    """forkproxy with the optional mypyc build (python -m forkproxy.proxy.http.native build) beside
    the default pure-Python one, in a compiled copy of the checkout; skipped with the reason
    where it cannot be built."""
    if ctx.quick:
        sec.skip(COMPILED, "measured in full runs only (its build takes about 30 s)")
        return
    say("  building the compiled data path (mypyc) in a copy of the checkout")
    built = await native.build(ctx.work)
    if isinstance(built, str):
        sec.skip(COMPILED, built)
        return
    try:
        fp = await stack.enter_async_context(
            forkproxy(
                ctx.work,
                "datapath-native",
                app_config(FORK_BACKEND),
                pool,
                cwd=built,
                command=native.COMMAND,
            )
        )
    except (RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as e:
        sec.fail(COMPILED, e)
        return
    sec.commands.append(
        f"{COMPILED}: python -m forkproxy.proxy.http.native build in a copy of the checkout, then "
        f"python -m forkproxy run ... from it, same settings"
    )
    targets[COMPILED] = fp.url + PATH


def _ratios(by_level: dict[int, dict[str, LoadResult]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in (CONNECTIONS, 256):
        rps = {k: v.rps for k, v in by_level[c].items()}
        for name in rps:
            if name != "direct":
                out[f"{name} / direct @{c}"] = ratio(rps[name], rps.get("direct", nan))
        for fp in ("forkproxy", COMPILED):
            if fp in rps:
                out[f"{fp} / nginx @{c}"] = ratio(rps[fp], rps.get("nginx", nan))
    return out


def _added_p50_us(at_one: dict[str, LoadResult]) -> dict[str, float]:
    direct = at_one.get("direct")
    if direct is None:
        return {}
    return {k: (v.p50_ms - direct.p50_ms) * 1000 for k, v in at_one.items() if k != "direct"}


def _report(
    sec: Section, by_level: dict[int, dict[str, LoadResult]], seconds: dict[int, float], rounds: int
) -> None:
    for c, results in by_level.items():
        direct = results.get("direct")
        rows: list[list[Any]] = []
        for name, r in results.items():
            rel = ratio(r.rps, direct.rps) if direct else nan
            rows.append([name, r.tool, r.rps, rel, r.p50_ms, r.p99_ms, r.errors, r.load1])
            if c == CONNECTIONS:
                sec.commands.append(f"load: {r.command}")
        sec.tables.append(
            Table(
                ["target", "tool", "req/s", "÷ direct", "p50 ms", "p99 ms", "errors", "load 1m"],
                rows,
                f"GET {PATH}, {c} connection(s), {seconds[c]:g} s per run, median of {rounds} "
                f"interleaved round(s) ({'by p50' if c == 1 else 'by req/s'})",
            )
        )
    added = _added_p50_us(by_level[1])
    one = by_level[1]
    sec.tables.append(
        Table(
            ["target", "p50 µs at c=1", "added p50 µs over direct", "p99 µs at c=1", "load 1m"],
            [
                [k, v.p50_ms * 1000, added.get(k, 0.0), v.p99_ms * 1000, v.load1]
                for k, v in one.items()
            ],
            "Latency one request at a time: what each hop adds",
        )
    )
    ratios = _ratios(by_level)
    sec.tables.append(
        Table(["throughput ratio", "value"], [[k, v] for k, v in ratios.items()], "req/s ratios")
    )
    sec.notes.append(
        "Client, proxy and app share the machine's 2 cores, so every hop also steals CPU "
        "from the app: ratios are what matters, absolute numbers are this box's. Each peer "
        "runs on one core (1 nginx worker, 1 HAProxy thread, GOMAXPROCS=1), as forkproxy's "
        "one event loop does. 'load 1m' is the box's load average when the run ended."
    )
    at = by_level[CONNECTIONS]
    if "forkproxy" in at and "direct" in at:
        via, d = at["forkproxy"], at["direct"]
        sec.headline = (
            f"Data path: forkproxy forwards {via.rps:,.0f} req/s, "
            f"{ratio(via.rps, d.rps):.0%} of the app served directly ({d.rps:,.0f} req/s)"
            + (f", {ratio(via.rps, at['nginx'].rps):.0%} of nginx" if "nginx" in at else "")
            + f"; p50 {via.p50_ms:.1f} ms vs {d.p50_ms:.1f} ms direct, {CONNECTIONS} connections"
            + (
                f"; {added['forkproxy']:.0f} µs added p50 at one connection"
                if "forkproxy" in added
                else ""
            )
            + "."
        )
