"""The backend contract: where instances come from. Small on purpose.

A backend starts an instance and returns once it has an endpoint; the pool then
probes readiness (unless the backend proved it, e.g. by handing over a socket that
is already listening). Blocking SDK calls must run in threads (asyncio.to_thread).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forkproxy.backends.support.gaps import GapLog

# Labels every backend puts on what it creates, so a restarted proxy finds leftovers.
LABEL_MANAGED = "io.forkproxy.managed"  # always "true"
LABEL_POOL = "io.forkproxy.pool"  # BackendContext.pool_name
LABEL_OWNER = "io.forkproxy.owner"  # BackendContext.owner_id (this proxy run)
LABEL_INSTANCE = "io.forkproxy.instance"  # Instance.id


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass
class Instance:
    """What a backend returns. `handle` is backend-private state (pid, container id, VM moref)."""

    id: str
    backend: str
    endpoint: Endpoint
    ready: bool = False  # True: backend proved readiness, the pool skips its HTTP probe
    owner_id: str = ""  # owner run that created it (from labels), for list()
    meta: dict[str, str] = field(default_factory=dict)  # shown in /instances
    handle: Any = None
    phases: dict[str, float] = field(default_factory=dict)  # start-time split, seconds


DeathCallback = Callable[[str, str], None]
"""on_death(instance_id, reason): the backend saw the instance die (exit, OOM, event)."""

WorkCallback = Callable[[str, bool], None]
"""on_working(instance_id, working): the instance's app is (or no longer is) at work after
its responses ended (an ASGI BackgroundTask, a WSGI response's close()): not idle, though
no request is in flight. Only backends that can tell call it (fork mode)."""


@dataclass
class BackendContext:
    pool_name: str  # stable across restarts: what list() filters on
    owner_id: str  # unique per proxy run
    readiness_path: str = "/"  # HTTP path the pool probes; backends that pre-warm use it too
    start_timeout: float = 30.0
    on_death: DeathCallback = field(default=lambda _id, _reason: None)
    on_working: WorkCallback = field(default=lambda _id, _working: None)
    # the app's idle gaps: the pool records them, a backend prices the rungs it owns by
    # them (the fork template's keep-alive)
    gaps: GapLog = field(default_factory=GapLog)

    def labels(self, instance_id: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_POOL: self.pool_name,
            LABEL_OWNER: self.owner_id,
            LABEL_INSTANCE: instance_id,
        }


class Backend(abc.ABC):
    """Start, stop and list instances. One object per proxy; methods are called concurrently."""

    name: str = "backend"

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Validate the world and warm the parent (template process, image, parent VM,
        paused pool). Raise BackendConfigError with a clear message if it cannot work."""

    @abc.abstractmethod
    async def start(self, instance_id: str) -> Instance:
        """Create an instance; return once it has an endpoint. Raise StartError."""

    @abc.abstractmethod
    async def stop(self, instance: Instance, reason: str) -> None:
        """Stop and remove it. Idempotent: stopping a dead instance is not an error."""

    @abc.abstractmethod
    async def list(self) -> list[Instance]:
        """Every instance labelled with this pool's name, from this run, an earlier one or a
        replica sharing the name (Instance.owner_id tells them apart)."""

    async def heartbeat(self) -> None:  # noqa: B027 - optional hook
        """Refresh this run's lease where its instances live, so replicas that share the
        pool name see it is alive. Called every few seconds; cheap. Default: no lease."""

    async def leases(self) -> dict[str, str] | None:
        """Owner id -> a lease token that changes on every heartbeat, for each owner with a
        lease here; None when this backend keeps no leases (its owners are then judged by
        forkproxy.backends.support.owner.gone_here alone: an owner on another host is never
        reaped)."""
        return None

    def concurrency_hint(self) -> int | None:
        """Requests one instance serves at once, if the backend knows its app (asked after
        prepare(): a fork template knows a WSGI app's threads). It becomes
        pool.max_concurrency when that is "auto"; None leaves the pool's default."""
        return None

    @property
    def spares(self) -> int:
        """Warm capacity held outside the pool right now: prefork children waiting in the
        template, paused containers parked. Not instances (no request reaches one until a
        start takes it), but they hold memory: the admin API and the metrics show them so
        an elasticity figure that leaves them out can be read with them. Default: none."""
        return 0

    def ladder(self) -> dict[str, Any] | None:
        """The warm states it keeps below its instances and what climbing back from each
        has cost, measured (fork mode: its template, up or given back; the start and import
        times; the shared zygote). Shown per app in /instances. Default: none."""
        return None

    async def memory(self, instances: Sequence[Instance]) -> dict[str, int]:
        """Bytes each instance holds now, by id, for those this backend can measure (the
        pool asks once a second, for all of them at once, when pool.max_memory is set).
        Read off the event loop. Default: none measured."""
        return {}

    @property
    def down_reason(self) -> str | None:
        """Why no start can succeed right now (every engine unreachable), or None. The pool
        then answers 503 at once instead of holding requests for starts that cannot work,
        and tries none until it is None again. Read on the data path: keep it cheap."""
        return None

    async def alive(self, instance: Instance) -> bool:
        """Cheap liveness check used after a failed request; default: assume alive."""
        return True

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything (templates, paused pools, sessions, watcher tasks)."""
