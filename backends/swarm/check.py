"""`forkproxy check-config` for the swarm backend: the manager is a swarm manager, and every
node named in node_engines is in the swarm. A manager that does not answer is only
mentioned (it may be up by the time the proxy runs; `run` then says why it cannot start)."""

from __future__ import annotations

import logging

from forkproxy.backends.engine.client import Engine
from forkproxy.backends.errors import BackendUnavailable
from forkproxy.backends.support.table import Problem
from forkproxy.backends.swarm.config import SwarmConfig

log = logging.getLogger("forkproxy.backend.swarm")


def check_config(config: SwarmConfig, *, imports: bool = True) -> list[Problem]:
    engine = Engine(config.manager, config.engine_retry)
    try:
        engine.connect()
        swarm = engine.client.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            state = swarm.get("LocalNodeState")
            return [
                Problem(
                    "backend.manager",
                    f"{config.manager} is not a Swarm manager (swarm state {state!r}):"
                    " run `docker swarm init` there, or name a manager node's engine",
                )
            ]
        nodes = engine.client.api.nodes()
    except BackendUnavailable as exc:
        log.warning("swarm not checked: %s", exc)
        return []
    finally:
        engine.close()
    known = {n["ID"] for n in nodes} | {
        str((n.get("Description") or {}).get("Hostname", "")) for n in nodes
    }
    return [
        Problem(f"backend.node_engines.{name}", "no node with that hostname or id in the swarm")
        for name in config.node_engines
        if name not in known
    ]
