"""What the admin listener (proxy/admin.py, proxy/live.py) reads of a running proxy: its
own settings, the metrics, readiness, and the generation serving new requests. A reload
replaces that generation, so the view asks for it on every read instead of holding one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from forkproxy.proxy.config import PoolConfig, ServerConfig
from forkproxy.proxy.metrics import Metrics


class PoolView(Protocol):
    """The pool as the admin listener reads it (forkproxy.proxy.pool.Pool is one)."""

    @property
    def cfg(self) -> PoolConfig: ...

    @property
    def queued(self) -> int: ...

    @property
    def serve_problem(self) -> str | None: ...

    @property
    def recent_failures(self) -> Iterable[dict[str, Any]]: ...

    def describe(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Serving:
    """The generation serving new requests, as the admin listener shows it."""

    pool: PoolView
    spares: int  # warm capacity its backend holds outside the pool
    owner_id: str
    pool_name: str
    backend_type: str
    requests: int = 0  # routed to it so far (the live page's requests per second)
    memory: int | None = None  # bytes its instances hold, measured; None: not measured
    template_memory: int | None = None  # bytes its templates hold; None: none reported
    template: str = ""  # "up", "down", or "" when the backend reports no template
    ladder: dict[str, Any] | None = None  # its backend's warm states and their costs


@dataclass(frozen=True)
class AdminView:
    # the admin listener's own settings (token, allowed hosts, caps) as it was built with
    server: ServerConfig
    metrics: Metrics
    serving: Callable[[], Serving]  # asked on each read: follows a reload
    apps: Callable[[], dict[str, Serving]]  # every app's serving generation, first app first
    ready: Callable[[], bool]
    # what every app holds against [budget] (proxy/machine.py Machine.usage)
    budget: Callable[[], dict[str, Any]] = dict
