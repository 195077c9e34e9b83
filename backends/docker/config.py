"""The `[backend]` table of `type = "docker"`: a frozen, validated DockerConfig.
Every problem is reported with its key path by forkproxy.backends.support.table.Table."""

from __future__ import annotations

from dataclasses import dataclass, field

from forkproxy.backends.engine.urls import DEFAULT_ENGINE, check_url
from forkproxy.backends.support.table import Table


@dataclass(frozen=True)
class DockerConfig:
    image: str
    command: tuple[str, ...] | None = None  # None: the image's CMD
    env: dict[str, str] = field(default_factory=dict)
    port: int = 8080  # the app's port inside the container
    engines: tuple[str, ...] = (DEFAULT_ENGINE,)
    network: str | None = None  # None: the engine's default bridge
    endpoint: str = "published"  # "published" | "container_ip"
    publish_host: str = "127.0.0.1"  # host IP the published port binds to
    memory: int = 256 * 1024**2  # bytes; 0 = no limit
    cpus: float = 0.5  # 0 = no limit
    pull: str = "never"  # "never" | "missing" | "always"
    paused_pool: int = 0  # started, probed, then paused containers kept ready
    stop_timeout: float = 5.0
    adopt: bool = False  # leftovers of an earlier run: adopt into the paused pool vs reap
    engine_retry: float = 1.0  # seconds between pings of an engine marked unhealthy
    engine_timeout: float = 3.0  # connect + ping; an engine silent this long is skipped


def parse_config(table: Table) -> DockerConfig:
    image = table.str("image", required=True)
    command = tuple(table.str_list("command")) if table.has("command") else None
    if command == ():
        table.error("command", "must not be empty (omit it to use the image's CMD)")
    engines = tuple(table.str_list("engines", [DEFAULT_ENGINE]))
    if not engines:
        table.error("engines", "needs at least one engine URL")
    for url in engines:
        check_url(table, "engines", url)
    cfg = DockerConfig(
        image=image,
        command=command,
        env=table.str_map("env"),
        port=table.int("port", 8080, min=1, max=65535),
        engines=engines or (DEFAULT_ENGINE,),
        network=table.opt_str("network"),
        endpoint=table.choice("endpoint", ("published", "container_ip"), "published"),
        publish_host=table.str("publish_host", "127.0.0.1"),
        memory=table.size("memory", 256 * 1024**2),
        cpus=table.float("cpus", 0.5, min=0.0),
        pull=table.choice("pull", ("never", "missing", "always"), "never"),
        paused_pool=table.int("paused_pool", 0, min=0, max=1000),
        stop_timeout=table.duration("stop_timeout", 5.0),
        adopt=table.bool("adopt", False),
        engine_retry=table.duration("engine_retry", 1.0, min=0.1),
        engine_timeout=table.duration("engine_timeout", 3.0, min=0.1),
    )
    if 0 < cfg.memory < 6 * 1024**2:
        table.error("memory", "below Docker's minimum of 6m (use 0 for no limit)")
    table.done()
    return cfg
