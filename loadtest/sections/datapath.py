"""Section 1, the data path: fixed-concurrency load direct to one warm app instance, through
forkproxy (fork backend, one warm instance) and through nginx in front of the same app."""

from __future__ import annotations

import contextlib
import shlex
from math import nan

import aiohttp

from loadtest.load.httpload import LoadResult, run_load, wrk_path
from loadtest.report.stats import ratio
from loadtest.run import nginx
from loadtest.run.procs import PYTHON, running_on_free_port
from loadtest.run.proxy import FORK_BACKEND, app_config, forkproxy
from loadtest.run.tools import ensure_debian_package
from loadtest.sections.model import BenchContext, Section, Table, say

CONNECTIONS = 32
PATH = "/"


def median_run(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


async def run(ctx: BenchContext, require_tools: bool = False) -> Section:
    sec = Section("datapath", "Data path: requests/s and latency at fixed concurrency")
    seconds = ctx.pick(10.0, 3.0)
    no_wrk = await ensure_debian_package("wrk", "wrk", ctx.install_tools)
    no_nginx = await ensure_debian_package("nginx", "nginx", ctx.install_tools)
    if require_tools and (no_wrk or no_nginx):
        raise RuntimeError(f"FORKPROXY_REQUIRE_BENCH_TOOLS=1 but {no_wrk or no_nginx}")
    if no_wrk:
        sec.skip("wrk", f"{no_wrk}; measured with the aiohttp closed-loop client instead")
    use_wrk = wrk_path() is not None
    rounds = ctx.pick(3, 1)
    targets: dict[str, str] = {}
    pool = {
        # One instance with room for every connection: the same work as "direct", plus the hop.
        "min_instances": 1,
        "max_instances": 1,
        "max_concurrency": CONNECTIONS * 2,
        "target_concurrency": float(CONNECTIONS * 2),
        "idle_ttl": "10m",
    }
    async with contextlib.AsyncExitStack() as stack:

        def app_argv(port: int) -> list[str]:
            return [PYTHON, "-m", "examples.app", "--port", str(port)]

        _, app_port = await stack.enter_async_context(
            running_on_free_port("app", app_argv, ctx.work / "logs")
        )
        sec.commands.append("app: " + shlex.join(["python", *app_argv(app_port)[1:]]))
        targets["direct"] = f"http://127.0.0.1:{app_port}{PATH}"
        if no_nginx:
            sec.skip("nginx", no_nginx)
        else:
            binary = nginx.nginx_path()
            assert binary is not None

            def nginx_argv(port: int) -> list[str]:
                conf = nginx.write_conf(ctx.work / "nginx", port, app_port)
                return nginx.nginx_argv(binary, conf)

            _, port = await stack.enter_async_context(
                running_on_free_port("nginx", nginx_argv, ctx.work / "logs")
            )
            argv = nginx.nginx_argv(binary, ctx.work / "nginx" / "nginx.conf")
            sec.commands.append(f"nginx: {shlex.join(argv)} (1 worker, upstream keepalive 128)")
            targets["nginx"] = f"http://127.0.0.1:{port}{PATH}"
        try:
            fp = await stack.enter_async_context(
                forkproxy(ctx.work, "datapath", app_config(FORK_BACKEND), pool)
            )
            sec.commands.append(f"forkproxy: {fp.command} with {fp.settings}")
            targets["forkproxy"] = fp.url + PATH
        except (RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as e:
            sec.fail("forkproxy", e)

        # Rounds interleave the targets so a noisy neighbour on the box hits them all alike.
        runs: dict[str, list[LoadResult]] = {k: [] for k in targets}
        for i in range(rounds):
            for name, url in targets.items():
                say(f"  round {i + 1}/{rounds}: {name}, {CONNECTIONS} connections, {seconds:g}s")
                runs[name].append(await run_load(url, CONNECTIONS, seconds, use_wrk))
    results = {k: median_run(v) for k, v in runs.items() if v}

    for r in results.values():
        sec.commands.append(f"load: {r.command}")
    rows = [
        [name, r.tool, r.rps, r.p50_ms, r.p99_ms, r.requests, r.errors]
        for name, r in results.items()
    ]
    sec.tables.append(
        Table(
            ["target", "tool", "req/s", "p50 ms", "p99 ms", "requests", "errors"],
            rows,
            f"GET {PATH}, {CONNECTIONS} connections, {seconds:g} s per run, median of "
            f"{rounds} interleaved round(s) by req/s",
        )
    )
    rps = {k: v.rps for k, v in results.items()}
    ratios = [
        ["forkproxy / direct", ratio(rps.get("forkproxy", nan), rps.get("direct", nan))],
        ["forkproxy / nginx", ratio(rps.get("forkproxy", nan), rps.get("nginx", nan))],
        ["nginx / direct", ratio(rps.get("nginx", nan), rps.get("direct", nan))],
    ]
    sec.tables.append(Table(["throughput ratio", "value"], ratios, "Ratios of requests/s"))
    sec.notes.append(
        "Client, proxy and app share the machine's 2 cores, so every hop also steals CPU "
        "from the app: ratios are what matters, absolute numbers are this box's."
    )
    if "forkproxy" in results and "direct" in results:
        via, d = results["forkproxy"], results["direct"]
        sec.headline = (
            f"Data path: forkproxy forwards {via.rps:,.0f} req/s, "
            f"{ratio(via.rps, d.rps):.0%} of the app served directly ({d.rps:,.0f} req/s)"
            + (
                f", {ratio(via.rps, results['nginx'].rps):.0%} of nginx"
                if "nginx" in results
                else ""
            )
            + f"; p50 {via.p50_ms:.1f} ms vs {d.p50_ms:.1f} ms direct, {CONNECTIONS} connections."
        )
    sec.data = {
        "connections": CONNECTIONS,
        "seconds": seconds,
        "pool": pool,
        "rounds": rounds,
        "results": {k: v.as_dict() for k, v in results.items()},
        "all_runs": {k: [r.as_dict() for r in v] for k, v in runs.items()},
        "ratios": {r[0]: r[1] for r in ratios},
    }
    return sec
