"""The `[backend]` table of `type = "swarm"`: a frozen, validated SwarmConfig. Every problem
is reported with its key path by forkproxy.backends.support.table.Table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from forkproxy.backends.engine.urls import DEFAULT_ENGINE, check_url
from forkproxy.backends.support.table import Table

# Swarm's own constraint grammar: `<attribute> == <value>` or `!=` (docker service create
# --constraint). Checked here so a typo is a config error, not a task pending forever.
_CONSTRAINT = re.compile(r"^\s*[A-Za-z][\w.\-]*\s*(==|!=)\s*\S.*$")
_SPREAD = "spread="


@dataclass(frozen=True)
class SwarmConfig:
    image: str
    command: tuple[str, ...] | None = None  # None: the image's CMD
    env: dict[str, str] = field(default_factory=dict)
    port: int = 8080  # the app's port inside the container, published in host mode
    manager: str = DEFAULT_ENGINE  # a Swarm manager's engine API
    memory: int = 256 * 1024**2  # bytes; 0 = no limit
    cpus: float = 0.5  # 0 = no limit
    constraints: tuple[str, ...] = ()  # e.g. "node.labels.zone == a"
    preferences: tuple[str, ...] = ()  # spread descriptors, e.g. "node.labels.zone"
    paused_pool: int = 0  # services started, probed, then paused on their node, kept ready
    node_engines: dict[str, str] = field(default_factory=dict)  # node hostname/id -> engine URL
    stop_grace: float = 5.0  # SIGTERM -> SIGKILL on removal (the service's stop grace period)
    poll: float = 0.25  # seconds between task-state polls (deaths; Swarm has no task events)
    engine_retry: float = 10.0  # seconds before an unreachable manager is tried again


def parse_config(table: Table) -> SwarmConfig:
    image = table.str("image", required=True)
    command = tuple(table.str_list("command")) if table.has("command") else None
    if command == ():
        table.error("command", "must not be empty (omit it to use the image's CMD)")
    manager = table.str("manager", DEFAULT_ENGINE)
    check_url(table, "manager", manager)
    constraints = tuple(table.str_list("constraints", []))
    for c in constraints:
        if not _CONSTRAINT.match(c):
            table.error(
                "constraints",
                f"{c!r} is not '<attribute> == <value>' or '<attribute> != <value>'"
                " (e.g. 'node.labels.zone == a', 'node.role == worker')",
            )
    preferences = []
    for p in table.str_list("preferences", []):
        descriptor = p[len(_SPREAD) :] if p.startswith(_SPREAD) else p
        if not descriptor or not re.fullmatch(r"[A-Za-z][\w.\-]*", descriptor):
            table.error(
                "preferences",
                f"{p!r} is not a spread descriptor (e.g. 'node.labels.zone' or"
                " 'spread=node.labels.zone'; Swarm knows only spread)",
            )
        preferences.append(descriptor)
    node_engines = table.str_map("node_engines")
    for node, url in node_engines.items():
        check_url(table, f"node_engines.{node}", url)
    cfg = SwarmConfig(
        image=image,
        command=command,
        env=table.str_map("env"),
        port=table.int("port", 8080, min=1, max=65535),
        manager=manager,
        memory=table.size("memory", 256 * 1024**2),
        cpus=table.float("cpus", 0.5, min=0.0),
        constraints=constraints,
        preferences=tuple(preferences),
        paused_pool=table.int("paused_pool", 0, min=0, max=1000),
        node_engines=node_engines,
        stop_grace=table.duration("stop_grace", 5.0),
        poll=table.duration("poll", 0.25, min=0.02),
        engine_retry=table.duration("engine_retry", 10.0, min=0.1),
    )
    if 0 < cfg.memory < 6 * 1024**2:
        table.error("memory", "below Docker's minimum of 6m (use 0 for no limit)")
    table.done()
    return cfg
