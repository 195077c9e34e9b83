"""Blocking container operations of the docker backend (run them in a thread): create
and start with limits and labels, stop and remove, and where a container is reachable."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import docker.errors

from forkproxy.backends.base import Endpoint
from forkproxy.backends.docker.config import DockerConfig
from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.reasons import exited_before_ready
from forkproxy.backends.errors import StartError

log = logging.getLogger("forkproxy.backend.docker")


@dataclass(eq=False)
class Container:
    """Instance.handle: where the container lives."""

    engine: Engine
    id: str
    name: str


def create_started(
    engine: Engine, cfg: DockerConfig, name: str, labels: dict[str, str], env: dict[str, str]
) -> tuple[Container, dict[str, Any], dict[str, float]]:
    """Create and start a container; return it, its inspect attrs and phase seconds.
    Anything half-made is removed before the error propagates."""
    api = engine.client.api
    ports = {cfg.port: (cfg.publish_host, None)} if cfg.endpoint == "published" else {}
    spec: dict[str, Any] = {
        "command": list(cfg.command) if cfg.command else None,
        "labels": labels,
        "environment": {**env, **cfg.env},
        "ports": [cfg.port],
        "detach": True,
        "host_config": api.create_host_config(
            port_bindings=ports or None,
            mem_limit=cfg.memory or None,
            memswap_limit=cfg.memory or None,  # no swap: an overrun is an OOM, not a crawl
            nano_cpus=int(cfg.cpus * 1e9) or None,
            network_mode=cfg.network,
        ),
    }
    t0 = time.monotonic()
    try:
        created = api.create_container(cfg.image, name=name, **spec)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: the name is taken (a leftover): add a suffix
            raise
        name = f"{name}-{uuid.uuid4().hex[:6]}"
        created = api.create_container(cfg.image, name=name, **spec)
    c = Container(engine, created["Id"], name)
    t1 = time.monotonic()
    try:
        api.start(c.id)
        t2 = time.monotonic()
        attrs: dict[str, Any] = api.inspect_container(c.id)
        state = attrs.get("State") or {}
        if not state.get("Running"):
            raise exited_before_ready(
                f"container {name}",
                state.get("ExitCode"),
                oom=bool(state.get("OOMKilled")),
                logs=engine.logs_tail(c.id),
            )
    except BaseException:
        remove_quietly(c)
        raise
    return c, attrs, {"create": t1 - t0, "start": t2 - t1}


def remove_quietly(c: Container) -> None:
    """Force-remove; gone already (or being removed) is fine, anything else is logged."""
    try:
        c.engine.client.api.remove_container(c.id, v=True, force=True)
    except docker.errors.NotFound:
        pass
    except Exception as exc:
        if "already in progress" not in str(exc):
            log.warning("could not remove container %s on %s: %s", c.name, c.engine.url, exc)


def stop_and_remove(c: Container, stop_timeout: float) -> None:
    """docker stop (SIGTERM, then SIGKILL after the grace), then remove with volumes."""
    api = c.engine.client.api
    try:
        api.stop(c.id, timeout=math.ceil(stop_timeout))
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        log.debug("stop %s: %s (removing by force)", c.name, exc)
    try:
        api.remove_container(c.id, v=True, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise


def endpoint_of(cfg: DockerConfig, engine: Engine, attrs: dict[str, Any]) -> Endpoint:
    """Where the proxy reaches the app: the published host port or the container's IP."""
    net = attrs.get("NetworkSettings") or {}
    if cfg.endpoint == "container_ip":
        networks = net.get("Networks") or {}
        want = cfg.network or "bridge"
        info: dict[str, Any] = networks.get(want) or next(iter(networks.values()), {})
        ip = info.get("IPAddress") or net.get("IPAddress")
        if not ip:
            raise StartError(f"container has no IP on network {want!r}", reason="no_endpoint")
        return Endpoint(ip, cfg.port)
    bindings = (net.get("Ports") or {}).get(f"{cfg.port}/tcp") or []
    if not bindings:
        raise StartError(f"port {cfg.port}/tcp was not published", reason="no_endpoint")
    host = cfg.publish_host
    if host in ("0.0.0.0", "::", ""):
        host = engine.publish_default_host
    return Endpoint(host, int(bindings[0]["HostPort"]))
