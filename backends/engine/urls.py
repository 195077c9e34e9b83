"""Docker engine URLs as the config of a backend on the Docker engine takes them."""

from __future__ import annotations

from forkproxy.backends.support.table import Table

ENGINE_SCHEMES = ("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")
DEFAULT_ENGINE = "unix:///var/run/docker.sock"


def check_url(table: Table, key: str, url: str) -> None:
    """Report an engine URL the SDK cannot take under `key`, naming the schemes it can."""
    if not url.startswith(ENGINE_SCHEMES):
        table.error(key, f"{url!r} must start with one of: {', '.join(ENGINE_SCHEMES)}")
