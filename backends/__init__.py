"""Where instances come from. Backends are imported lazily so their optional SDKs
(docker, pyvmomi) are only needed when configured.

Each backend module defines:
    parse_config(table: forkproxy.backends.support.table.Table) -> <its frozen config dataclass>
    create_backend(config, ctx: forkproxy.backends.base.BackendContext)
        -> forkproxy.backends.base.Backend
and may define, for `forkproxy check-config` (blocking, before any traffic):
    check_config(config, *, imports: bool) -> list[forkproxy.backends.support.table.Problem]
"""

from __future__ import annotations

import importlib
from types import ModuleType

from forkproxy.backends.support.extras import extra_needed

BACKENDS: dict[str, str] = {
    "process": "forkproxy.backends.process",
    "docker": "forkproxy.backends.docker",
    "vsphere": "forkproxy.backends.vsphere",
    "swarm": "forkproxy.backends.swarm",
}


def load(name: str) -> ModuleType:
    """The backend's module; MissingExtra (an ImportError) names the extra it needs."""
    with extra_needed(f"the {name} backend"):
        return importlib.import_module(BACKENDS[name])
