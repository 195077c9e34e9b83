"""The `swarm` backend: one Docker Swarm service (one replica) per instance, placed by the
swarm's own scheduler. The docker SDK is imported only when used."""

from __future__ import annotations

import logging

from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.support.extras import MissingExtra, extra_needed
from forkproxy.backends.support.table import Problem
from forkproxy.backends.swarm.config import SwarmConfig, parse_config

__all__ = ["SwarmConfig", "check_config", "create_backend", "parse_config"]


def create_backend(config: SwarmConfig, ctx: BackendContext) -> Backend:
    with extra_needed("the swarm backend"):  # names the extra if the SDK is missing
        from forkproxy.backends.swarm.backend import SwarmBackend

    return SwarmBackend(config, ctx)


def check_config(config: SwarmConfig, *, imports: bool = True) -> list[Problem]:
    """For `forkproxy check-config`: the manager is one, node_engines name real nodes."""
    try:
        with extra_needed("checking the swarm"):
            from forkproxy.backends.swarm.check import check_config as check
    except MissingExtra as exc:  # the config itself is valid; `run` names the extra
        logging.getLogger("forkproxy.backend.swarm").warning("swarm not checked: %s", exc)
        return []
    return check(config, imports=imports)
