"""`forkproxy top ADMIN_URL`: the live page in a terminal (for a proxy on a server over
ssh). It reads the same Server-Sent Events the page reads, so both show the same samples."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from rich.console import RenderableType

TOKEN_ENV = "FORKPROXY_ADMIN_TOKEN"
_BARS = " ▁▂▃▄▅▆▇█"
_WIDTH = 60  # seconds of history in the sparklines


async def events(
    session: aiohttp.ClientSession, url: str, token: str | None = None
) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs from the admin listener's /events stream."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url.rstrip("/") + "/events", headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}/events answered {resp.status}: {(await resp.text())[:200]}")
        event, data = "message", list[str]()
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


async def first_sample(url: str, token: str | None = None) -> dict[str, Any]:
    """The sample the admin listener is showing now (what `top --once` prints)."""
    async with aiohttp.ClientSession() as session:
        async for event, data in events(session, url, token):
            if event == "sample":
                return dict(data)
    raise RuntimeError(f"{url}/events ended before a sample")


def rows(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The instance table as top shows it (the first app's)."""
    return _rows(sample["instances"])


def by_app(sample: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every app's instance table, first app first (a proxy from before apps: its one
    pool, under its name)."""
    if "apps" not in sample:
        return {sample["pool"]: rows(sample)}
    return {a["app"]: _rows(a["instances"]) for a in sample["apps"]}


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1048576:.1f} MiB"


def _rows(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": r["id"],
            "backend": r["backend"],
            "state": r["state"],
            "in_flight": r["in_flight"],
            "served": r["requests_served"],
            "age": r["age"],
            "idle": r["idle"],
            "endpoint": r["endpoint"] or "",
            "owner": r.get("owner", ""),
        }
        for r in instances
    ]


def spark(values: Sequence[float]) -> str:
    top = max(values, default=0) or 1
    return "".join(_BARS[round(v / top * (len(_BARS) - 1))] for v in values[-_WIDTH:])


def render(sample: dict[str, Any], history: Sequence[dict[str, Any]]) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    apps = sample.get("apps") or []
    # several apps: the summary is the whole machine's (the apps summed, as the live
    # page's default view); one app: that app's, as before
    whole = len(apps) > 1 and "*" in (sample.get("series") or {})

    def cut(s: dict[str, Any]) -> dict[str, Any]:
        return s["series"]["*"] if whole and "*" in (s.get("series") or {}) else s

    cur, past = cut(sample), [cut(h) for h in history]
    states = cur["states"]
    what = f"{len(apps)} apps" if whole else sample["pool"]
    head = Text.assemble(
        ("forkproxy ", "bold"),
        f"{what} · {sample['backend']} · owner {sample['owner']} · seq {sample['seq']}",
    )
    live = [_live(h["states"]) for h in past]
    summary = Table.grid(padding=(0, 2))
    summary.add_row(
        "instances",
        f"{_live(states)} live ({states.get('ready', 0)} ready, "
        f"{states.get('starting', 0)} starting, {states.get('draining', 0)} draining; "
        f"{cur['spares']} spare)",
        Text(spark(live), style="green"),
    )
    bound = "⌈in flight / max_concurrency⌉" + (", per app, summed" if whole else "")
    summary.add_row(
        "lower bound",
        f"{cur['lower_bound']} = {bound}",
        Text(spark([h["lower_bound"] for h in past]), style="blue"),
    )
    summary.add_row(
        "requests",
        f"{cur['in_flight']} in flight, {cur['queued']} queued",
        Text(spark([h["in_flight"] for h in past]), style="magenta"),
    )
    summary.add_row(
        "cold starts",
        f"{cur['starts_per_s']:.1f}/s  results {sample['start_results']}",
        Text(spark([h["starts_per_s"] for h in past]), style="yellow"),
    )
    tables: list[RenderableType] = []
    grouped = by_app(sample)
    if "apps" in sample:
        tables.append(_apps_table(sample))
    for app, instances in grouped.items():
        title = f"instances · {app}" if len(grouped) > 1 else "instances"
        tables.append(_instances_table(title, instances))
    parts: list[RenderableType] = [head, summary, *tables]
    failures = list(sample["failures"])
    if whole:  # each app's settings, and every app's recent failures
        failures = []
        for a in apps:
            parts.append(_settings(f"settings · {a['app']}", a))
            failures.extend({**f, "instance": f"{a['app']}/{f['instance']}"} for f in a["failures"])
    else:
        parts.append(_settings("settings", sample))
    failures.sort(key=lambda f: float(f.get("t", 0)))
    for f in failures[-5:]:
        parts.append(Text(f"start failed: {f['instance']} {f['reason']}: {f['error']}", "red"))
    return Group(*parts)


def _live(states: dict[str, int]) -> int:
    return states.get("ready", 0) + states.get("starting", 0)


def _settings(title: str, owner: dict[str, Any]) -> RenderableType:
    from rich.text import Text

    settings = " ".join(f"{k}={v}" for k, v in owner["settings"].items())
    return Text(f"{title} ({owner['settings_source']}): {settings}", style="dim")


def _instances_table(title: str, instances: list[dict[str, Any]]) -> RenderableType:
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False)
    for col in ("id", "backend", "state", "in flight", "served", "age", "idle", "endpoint"):
        table.add_column(col, justify="right" if col in ("in flight", "served") else "left")
    for r in instances:
        idle = "-" if r["in_flight"] else f"{r['idle']:.1f}s"
        table.add_row(
            r["id"],
            r["backend"],
            r["state"],
            str(r["in_flight"]),
            str(r["served"]),
            f"{r['age']:.1f}s",
            idle,
            r["endpoint"],
        )
    return table


def _apps_table(sample: dict[str, Any]) -> RenderableType:
    from rich.table import Table

    b = sample.get("budget") or {}
    mem_cap = _mib(b["max_memory"]) if b.get("max_memory") else "no cap"
    caps = [
        f"instances {b.get('instances', '-')}/{b.get('max_instances') or 'no cap'}",
        f"memory {_mib(b.get('memory'))}/{mem_cap}",
    ]
    table = Table(title=f"apps · budget {', '.join(caps)}", title_justify="left", expand=False)
    cols = ("app", "backend", "busy", "idle", "starting", "queued", "req/s", "memory", "template")
    for col in cols:
        table.add_column(col, justify="left" if col in ("app", "backend", "template") else "right")
    for a in sample["apps"]:
        tpl = a["template"] or "-"
        if a["template"] == "up":
            tpl = f"up {_mib(a['template_memory'])}"
        table.add_row(
            a["app"],
            a["backend"],
            str(a["busy"]),
            str(a["idle"]),
            str(a["starting"]),
            str(a["queued"]),
            f"{a['requests_per_s']:.1f}",
            _mib(a["memory"]),
            tpl,
        )
    return table


async def run(url: str, token: str | None, once: bool) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(width=None if sys.stdout.isatty() else 160)
    history: deque[dict[str, Any]] = deque(maxlen=_WIDTH)
    timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=15)  # samples come every second
    async with aiohttp.ClientSession(timeout=timeout) as session:
        stream = events(session, url, token)
        if once:
            async for event, data in stream:
                if event == "history":
                    history.extend(data)
                elif event == "sample":
                    console.print(render(data, history))
                    return 0
            return 1
        with Live(console=console, auto_refresh=False, screen=False) as view:
            async for event, data in stream:
                if event == "history":
                    history.extend(data)
                elif event == "sample":
                    history.append(data)
                    view.update(render(data, history), refresh=True)
    return 0


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get(TOKEN_ENV) or None


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="forkproxy top", description="Watch a running forkproxy from its admin listener."
    )
    p.add_argument("url", nargs="?", default="http://127.0.0.1:9090", help="admin listener URL")
    p.add_argument("--once", action="store_true", help="print the current view and exit")
    p.add_argument("--token-file", help=f"file holding the admin bearer token (or ${TOKEN_ENV})")
    args = p.parse_args(list(argv))
    try:
        import rich  # noqa: F401
    except ImportError:
        print("forkproxy top needs rich: pip install 'forkproxy[top]'", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args.url, _token(args), args.once))
    except KeyboardInterrupt:
        return 0
    except (OSError, aiohttp.ClientError, RuntimeError) as exc:
        print(f"forkproxy top: {exc}", file=sys.stderr)
        return 1
