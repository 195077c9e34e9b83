"""Blocking Swarm operations of the swarm backend (run them in the backend's threads): a
service per instance (one replica, restart none, labels, limits, placement, a host-mode
port), the wait for its task to run, where it is reachable, and its drained removal."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker.types import (
    ContainerSpec,
    Placement,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from forkproxy.backends.engine.client import Engine
from forkproxy.backends.engine.reasons import exited_before_ready
from forkproxy.backends.errors import StartError
from forkproxy.backends.swarm.config import SwarmConfig

log = logging.getLogger("forkproxy.backend.swarm")

# A task in one of these states will never run (again): Swarm does not restart it
# (restart-condition none) and the service keeps it only as history.
TERMINAL = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9-]+")
_NAME_MAX = 63  # service names are DNS labels
# What a task's Err says when its node has no image and could not pull it.
_NO_IMAGE = ("no such image", "pull access denied", "manifest unknown")


@dataclass(eq=False)
class Service:
    """Instance.handle: the service and the one task that runs it."""

    id: str
    name: str
    task_id: str = ""
    node_id: str = ""
    container_id: str = ""  # on the node's engine: what a parked spare pauses


def service_name(pool: str, instance_id: str) -> str:
    """forkproxy-<pool>-<instance>, as a DNS label; long ones keep a hash for uniqueness."""
    name = _NAME_UNSAFE.sub("-", f"forkproxy-{pool}-{instance_id}").strip("-")
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _NAME_MAX - 11].rstrip('-')}-{digest}"


def _spec(cfg: SwarmConfig, labels: dict[str, str], env: dict[str, str]) -> dict[str, Any]:
    container = ContainerSpec(
        cfg.image,
        args=list(cfg.command) if cfg.command else None,
        env={**env, **cfg.env},
        labels=labels,  # on the container too: `docker ps` on any node shows whose it is
        stop_grace_period=int(cfg.stop_grace * 1e9),
    )
    limits: dict[str, int] = {}
    if cfg.memory:
        limits["MemoryBytes"] = cfg.memory
    if cfg.cpus:
        limits["NanoCPUs"] = int(cfg.cpus * 1e9)
    placement = Placement(
        constraints=list(cfg.constraints) or None,
        preferences=[("spread", p) for p in cfg.preferences] or None,
    )
    template = TaskTemplate(
        container,
        resources={"Limits": limits} if limits else None,
        restart_policy=RestartPolicy(condition="none"),
        placement=placement,
    )
    return {
        "task_template": template,
        "labels": labels,
        "mode": ServiceMode("replicated", replicas=1),
        # Host mode, no published port: the node's engine picks a free one, which the
        # task reports in Status.PortStatus. No routing mesh: the proxy is the balancer.
        "endpoint_spec": {
            "Ports": [{"Protocol": "tcp", "TargetPort": cfg.port, "PublishMode": "host"}]
        },
    }


def create(
    engine: Engine, cfg: SwarmConfig, name: str, labels: dict[str, str], env: dict[str, str]
) -> Service:
    """docker service create; a taken name (a leftover) gets a suffix."""
    api = engine.client.api
    spec = _spec(cfg, labels, env)
    try:
        made = api.create_service(name=name, **spec)
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        name = f"{name[: _NAME_MAX - 7]}-{uuid.uuid4().hex[:6]}"
        made = api.create_service(name=name, **spec)
    return Service(made["ID"], name)


def wait_running(engine: Engine, svc: Service, deadline: float, poll: float) -> dict[str, Any]:
    """Poll the service's task until it runs with its port published; return the task.
    A task that ends first, or no task running by `deadline`, is a StartError."""
    api = engine.client.api
    last = "no task yet"
    while True:
        for task in api.tasks(filters={"service": svc.id}):
            status = task.get("Status") or {}
            state = status.get("State", "")
            if state == "running":
                ports = (status.get("PortStatus") or {}).get("Ports") or []
                if ports:
                    svc.task_id, svc.node_id = task["ID"], task.get("NodeID", "")
                    svc.container_id = (status.get("ContainerStatus") or {}).get("ContainerID", "")
                    return dict(task)
            if state in TERMINAL:
                raise ended_before_running(engine, svc, status)
            last = f"{state}: {status.get('Err') or status.get('Message') or ''}".strip()
        if time.monotonic() > deadline:
            reason = "no_suitable_node" if "no suitable node" in last else "task_timeout"
            raise StartError(f"service {svc.name}: no running task in time ({last})", reason=reason)
        time.sleep(poll)


def ended_before_running(engine: Engine, svc: Service, status: dict[str, Any]) -> StartError:
    """Why a task ended before it ran, from its Status: a node without the image
    (`image_missing`), else the app's end (its exit code, the service's last log lines)."""
    state = str(status.get("State", ""))
    err = str(status.get("Err") or status.get("Message") or "")
    if any(m in err.lower() for m in _NO_IMAGE):
        return StartError(
            f"service {svc.name}: task {state}: image not found: {err}", reason="image_missing"
        )
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return exited_before_ready(
        f"service {svc.name} (task {state}: {err})",
        code if state in ("failed", "complete") else None,
        oom=False,  # Swarm does not say; a death's exit 137 is checked on the node's engine
        logs=logs_tail(engine, svc.id),
    )


def logs_tail(engine: Engine, service_id: str, lines: int = 20) -> str:
    """The service's last log lines, through the manager (from any node's task)."""
    try:
        chunks = engine.client.api.service_logs(
            service_id, stdout=True, stderr=True, tail=lines, is_tty=False
        )
        raw = b"".join(chunks)
    except Exception as exc:
        return f"(logs unavailable: {exc})"
    return raw.decode("utf-8", "replace").rstrip()


def published_port(task: dict[str, Any], target: int) -> int:
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    for p in ports:
        if p.get("TargetPort") == target and p.get("PublishedPort"):
            return int(p["PublishedPort"])
    raise StartError(f"task {task.get('ID')} published no port for {target}", reason="no_endpoint")


def node_address(engine: Engine, node_id: str) -> tuple[str, str]:
    """(the address a node's host-mode ports are reached on, its hostname). The address is
    its Status.Addr (what it advertised to the swarm); 0.0.0.0 means the manager's host."""
    node = engine.client.api.inspect_node(node_id)
    addr = str((node.get("Status") or {}).get("Addr") or "")
    if addr in ("", "0.0.0.0"):
        addr = engine.publish_default_host
    return addr, str((node.get("Description") or {}).get("Hostname") or "")


def scale(engine: Engine, service_id: str, replicas: int) -> None:
    """Set the replica count. An update races the swarm's own updates of the service (its
    allocator bumps the version right after a create): "out of sequence" is retried with
    the new version."""
    api = engine.client.api
    for attempt in range(5):
        version = api.inspect_service(service_id)["Version"]["Index"]
        try:
            api.update_service(
                service_id,
                version=version,
                mode=ServiceMode("replicated", replicas=replicas),
                fetch_current_spec=True,
            )
            return
        except docker.errors.APIError as exc:
            if "out of sequence" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.05)


def drain_and_remove(engine: Engine, svc: Service, grace: float) -> None:
    """Scale to 0 (Swarm stops the task: SIGTERM, stop_grace, SIGKILL), wait until no task
    of the service runs, then remove it. Removing at once would return before the container
    stopped; a caller (and `aclose`) could not tell when the instance stops answering."""
    try:
        scale(engine, svc.id, 0)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:  # removal still stops it, only without the wait
        log.warning("scale %s to 0: %s (removing at once)", svc.name, exc)
        remove_quietly(engine, svc)
        return
    api = engine.client.api
    deadline = time.monotonic() + grace + 10
    while time.monotonic() < deadline:
        try:
            tasks = api.tasks(filters={"service": svc.id})
        except docker.errors.NotFound:
            break
        if all((t.get("Status") or {}).get("State") in TERMINAL for t in tasks):
            break
        time.sleep(0.05)
    else:
        log.warning("service %s: task still running %.0fs after scale to 0", svc.name, grace + 10)
    remove_quietly(engine, svc)


def remove_quietly(engine: Engine, svc: Service) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        engine.client.api.remove_service(svc.id)
