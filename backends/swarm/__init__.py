"""The `swarm` backend: one Docker Swarm service (one replica) per instance, placed by the
swarm's own scheduler. The docker SDK is imported only when used."""

from __future__ import annotations

from backends.base import Backend, BackendContext
from backends.swarm.config import SwarmConfig, parse_config

__all__ = ["SwarmConfig", "create_backend", "parse_config"]


def create_backend(config: SwarmConfig, ctx: BackendContext) -> Backend:
    from backends.swarm.backend import SwarmBackend

    return SwarmBackend(config, ctx)
