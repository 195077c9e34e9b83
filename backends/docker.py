"""The docker backend: one labelled container per instance, placed on the least loaded of
several Docker engines, plus a pool of started-probed-then-paused containers that unpause
in milliseconds (the "frozen root"). Blocking SDK calls run in this backend's threads."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import docker.errors
from docker.utils import parse_repository_tag

from backends.base import (
    LABEL_INSTANCE,
    LABEL_OWNER,
    LABEL_POOL,
    Backend,
    BackendContext,
    Endpoint,
    Instance,
)
from backends.docker_config import DockerConfig, parse_config
from backends.docker_engine import Engine, is_unreachable, translate
from backends.errors import (
    BackendConfigError,
    BackendError,
    BackendUnavailable,
    StartError,
)

__all__ = ["LABEL_PAUSED", "DockerBackend", "DockerConfig", "create_backend", "parse_config"]

# Set at creation on paused-pool containers. Docker labels are immutable, so it stays
# after the container is taken; taken containers are renamed to the instance's name.
LABEL_PAUSED = "io.forkproxy.paused"

log = logging.getLogger("forkproxy.backend.docker")
T = TypeVar("T")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


@dataclass(eq=False)
class Container:
    """Instance.handle: where the container lives."""

    engine: Engine
    id: str
    name: str


@dataclass(eq=False)
class _Live:
    instance: Instance
    container: Container
    stopping: bool = False
    dead: bool = False


@dataclass(eq=False)
class _Parked:
    container: Container
    endpoint: Endpoint


def create_backend(config: DockerConfig, ctx: BackendContext) -> DockerBackend:
    return DockerBackend(config, ctx)


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, config: DockerConfig, ctx: BackendContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self._engines = [Engine(url, config.engine_retry) for url in config.engines]
        self._live: dict[str, _Live] = {}  # by instance id
        self._by_cid: dict[str, str] = {}  # container id -> live instance id
        self._parked: deque[_Parked] = deque()
        self._filling: dict[str, Container] = {}  # being started/probed for the paused pool
        self._oomed: set[str] = set()
        self._streams: dict[str, Any] = {}  # engine url -> docker CancellableStream
        self._tasks: set[asyncio.Task[Any]] = set()
        self._threads: set[asyncio.Future[Any]] = set()
        self._refill = asyncio.Event()
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        # Own pools: the default executor is small (cores + 4) and event streams would
        # pin its threads forever.
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="docker-api")
        self._event_pool = ThreadPoolExecutor(
            max_workers=len(self._engines), thread_name_prefix="docker-events"
        )

    def __repr__(self) -> str:
        up = sum(e.healthy for e in self._engines)
        return (
            f"<DockerBackend {len(self._live)} live, {len(self._parked)} paused, "
            f"{up}/{len(self._engines)} engines up>"
        )

    @property
    def paused_ready(self) -> int:
        """Containers parked in the paused pool right now (a start takes one)."""
        return len(self._parked)

    # -- plumbing ----------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in our pool. A cancelled caller does not abandon the call:
        aclose() waits for every call still running before it sweeps containers."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        self._threads.add(fut)
        fut.add_done_callback(_settle(self._threads))
        return await asyncio.shield(fut)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"docker:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def _container_name(self, instance_id: str) -> str:
        return _NAME_UNSAFE.sub("-", f"forkproxy-{self.ctx.pool_name}-{instance_id}")

    def _pick_engine(self) -> Engine:
        healthy = [e for e in self._engines if e.healthy]
        if not healthy:
            detail = "; ".join(f"{e.url}: {e.last_error}" for e in self._engines)
            raise StartError(f"no healthy Docker engine ({detail})", reason="engine_unreachable")
        return min(healthy, key=lambda e: len(e.containers))

    def _endpoint(self, engine: Engine, attrs: dict[str, Any]) -> Endpoint:
        net = attrs.get("NetworkSettings") or {}
        if self.cfg.endpoint == "container_ip":
            networks = net.get("Networks") or {}
            want = self.cfg.network or "bridge"
            info: dict[str, Any] = networks.get(want) or next(iter(networks.values()), {})
            ip = info.get("IPAddress") or net.get("IPAddress")
            if not ip:
                raise StartError(f"container has no IP on network {want!r}", reason="no_endpoint")
            return Endpoint(ip, self.cfg.port)
        bindings = (net.get("Ports") or {}).get(f"{self.cfg.port}/tcp") or []
        if not bindings:
            raise StartError(f"port {self.cfg.port}/tcp was not published", reason="no_endpoint")
        host = self.cfg.publish_host
        if host in ("0.0.0.0", "::", ""):
            host = engine.publish_default_host
        return Endpoint(host, int(bindings[0]["HostPort"]))

    # -- blocking container operations (thread side) -----------------------------------

    def _create_started(
        self, engine: Engine, name: str, labels: dict[str, str], instance_id: str
    ) -> tuple[str, dict[str, Any], dict[str, float]]:
        """Create and start a container; return (id, inspect attrs, phase seconds).
        Anything half-made is removed before the error propagates."""
        api = engine.client.api
        cfg = self.cfg
        env = {"FORKPROXY_INSTANCE_ID": instance_id, "FORKPROXY_POOL": self.ctx.pool_name}
        env.update(cfg.env)
        ports = {cfg.port: (cfg.publish_host, None)} if cfg.endpoint == "published" else {}
        host_config = api.create_host_config(
            port_bindings=ports or None,
            mem_limit=cfg.memory or None,
            memswap_limit=cfg.memory or None,  # no swap: an overrun is an OOM, not a crawl
            nano_cpus=int(cfg.cpus * 1e9) or None,
            network_mode=cfg.network,
        )
        phases: dict[str, float] = {}
        t0 = time.monotonic()
        try:
            created = api.create_container(
                cfg.image,
                command=list(cfg.command) if cfg.command else None,
                name=name,
                labels=labels,
                environment=env,
                ports=[cfg.port],
                host_config=host_config,
                detach=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: the name is taken (a leftover); retry unnamed
                raise
            name = f"{name}-{uuid.uuid4().hex[:6]}"
            created = api.create_container(
                cfg.image,
                command=list(cfg.command) if cfg.command else None,
                name=name,
                labels=labels,
                environment=env,
                ports=[cfg.port],
                host_config=host_config,
                detach=True,
            )
        cid: str = created["Id"]
        t1 = time.monotonic()
        phases["create"] = t1 - t0
        try:
            api.start(cid)
            t2 = time.monotonic()
            phases["start"] = t2 - t1
            attrs: dict[str, Any] = api.inspect_container(cid)
            state = attrs.get("State") or {}
            if not state.get("Running"):
                logs = engine.logs_tail(cid)
                raise StartError(
                    f"container {name} exited before ready (exit {state.get('ExitCode')}, "
                    f"oom={state.get('OOMKilled')}); last log lines:\n{logs}",
                    reason="oom" if state.get("OOMKilled") else "exited_before_ready",
                )
        except BaseException:
            self._remove_quietly(engine, cid)
            raise
        return cid, attrs, phases

    def _remove_quietly(self, engine: Engine, cid: str) -> None:
        try:
            engine.client.api.remove_container(cid, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            if "already in progress" not in str(exc):
                log.warning("could not remove container %s on %s: %s", cid[:12], engine.url, exc)

    def _stop_sync(self, c: Container) -> None:
        api = c.engine.client.api
        try:
            api.stop(c.id, timeout=math.ceil(self.cfg.stop_timeout))
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

    # -- Backend API -------------------------------------------------------------------

    async def prepare(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        results = await asyncio.gather(
            *(self._thread(e.connect) for e in self._engines), return_exceptions=True
        )
        for engine, result in zip(self._engines, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "Docker engine %s unreachable, skipped (retry every %ss): %s",
                    engine.url,
                    engine.retry_after,
                    result,
                )
        healthy = [e for e in self._engines if e.healthy]
        if not healthy:
            detail = "; ".join(f"{e.url}: {e.last_error}" for e in self._engines)
            raise BackendUnavailable(f"no Docker engine reachable: {detail}")
        for engine in healthy:
            await self._ensure_image(engine)
        for engine in healthy:
            await self._reap_or_adopt(engine)
        for engine in self._engines:
            self._spawn(self._watch(engine), f"events:{engine.url}")
        if self.cfg.paused_pool:
            try:
                await self._fill(deadline=time.monotonic() + self.ctx.start_timeout * 2)
            except BackendError as exc:
                raise BackendConfigError(
                    f"the paused pool could not be filled from image {self.cfg.image!r}: {exc}"
                ) from exc
            self._spawn(self._refiller(), "refill")

    async def start(self, instance_id: str) -> Instance:
        if self._closing:
            raise StartError("docker backend is closing", reason="closing")
        while self._parked:
            parked = self._parked.popleft()
            self._refill.set()
            try:
                return await self._take(parked, instance_id)
            except BackendError as exc:
                log.warning("paused container %s unusable: %s", parked.container.name, exc)
                self._spawn(self._remove(parked.container), "remove")
        # The pool wraps start() in a timeout: run the cold start as an owned task so a
        # cancelled caller cannot leak a container that is created a moment later.
        task = self._spawn(self._cold_start(instance_id), f"start:{instance_id}")
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._stop_orphan)
            raise

    def _stop_orphan(self, task: asyncio.Task[Instance]) -> None:
        if task.cancelled() or task.exception() is not None or self._closing:
            return
        inst = task.result()
        self._spawn(self.stop(inst, "abandoned"), f"stop:{inst.id}")

    async def _take(self, parked: _Parked, instance_id: str) -> Instance:
        c = parked.container
        t0 = time.monotonic()
        try:
            await self._thread(c.engine.client.api.unpause, c.id)
        except Exception as exc:
            raise translate(exc, c.engine.url, "unpause") from exc
        t1 = time.monotonic()
        inst = self._register(instance_id, c, parked.endpoint, ready=True)
        inst.phases = {"unpause": t1 - t0}
        inst.meta["from"] = "paused_pool"
        # The name is cosmetic (labels are immutable and keep the parking id): rename off
        # the hot path so `docker ps` shows which instance a container now serves.
        self._spawn(self._rename(c, self._container_name(instance_id)), f"rename:{instance_id}")
        return inst

    async def _rename(self, c: Container, name: str) -> None:
        try:
            await self._thread(c.engine.client.api.rename, c.id, name)
            c.name = name
        except Exception as exc:
            log.debug("rename %s -> %s failed: %s", c.name, name, exc)

    async def _cold_start(self, instance_id: str) -> Instance:
        tried: set[str] = set()
        while True:
            engine = self._pick_engine()
            tried.add(engine.url)
            name = self._container_name(instance_id)
            try:
                cid, attrs, phases = await self._thread(
                    self._create_started, engine, name, self.ctx.labels(instance_id), instance_id
                )
            except Exception as exc:
                err = translate(exc, engine.url, f"start {name}")
                if err.reason == "exited_before_ready":
                    log.warning("%s", err)
                if not isinstance(err, BackendUnavailable):
                    raise err from exc
                self._engine_failed(engine, err)
                if all(e.url in tried or not e.healthy for e in self._engines):
                    raise StartError(str(err), reason="engine_unreachable") from exc
                continue
            c = Container(engine, cid, str(attrs.get("Name", name)).lstrip("/"))
            engine.containers.add(cid)
            try:
                endpoint = self._endpoint(engine, attrs)
            except StartError:
                await self._remove(c)
                raise
            inst = self._register(instance_id, c, endpoint, ready=False)
            inst.phases = phases
            inst.meta["from"] = "create"
            return inst

    def _register(self, instance_id: str, c: Container, ep: Endpoint, *, ready: bool) -> Instance:
        inst = Instance(
            id=instance_id,
            backend=self.name,
            endpoint=ep,
            ready=ready,
            owner_id=self.ctx.owner_id,
            meta={"engine": c.engine.url, "container": c.id[:12], "image": self.cfg.image},
            handle=c,
        )
        c.engine.containers.add(c.id)
        self._live[instance_id] = _Live(inst, c)
        self._by_cid[c.id] = instance_id
        return inst

    async def stop(self, instance: Instance, reason: str) -> None:
        c = instance.handle
        if not isinstance(c, Container):
            raise BackendError(f"instance {instance.id} has no docker handle")
        live = self._live.get(instance.id)
        if live is not None and live.container.id == c.id:
            live.stopping = True
        try:
            if c.engine.client is None:
                raise BackendUnavailable(f"Docker engine {c.engine.url} is not connected")
            await self._thread(self._stop_sync, c)
        except Exception as exc:
            # The engine is gone: so is (or will be, when it is swept) the container.
            err = translate(exc, c.engine.url, f"stop {c.name}")
            if not isinstance(err, BackendUnavailable):
                raise err from exc
            log.warning("stop %s (%s): %s", c.name, reason, err)
        finally:
            self._forget(c)

    def _forget(self, c: Container) -> None:
        iid = self._by_cid.pop(c.id, None)
        if iid is not None and (live := self._live.get(iid)) and live.container.id == c.id:
            del self._live[iid]
        c.engine.containers.discard(c.id)
        self._oomed.discard(c.id)

    async def _remove(self, c: Container) -> None:
        try:
            await self._thread(self._remove_quietly, c.engine, c.id)
        finally:
            self._forget(c)

    async def list(self) -> list[Instance]:
        found: list[Instance] = []
        parked = {p.container.id for p in self._parked}
        for engine in self._engines:
            if not engine.healthy:
                continue
            try:
                rows = await self._thread(
                    engine.client.api.containers,
                    all=True,
                    filters={"label": f"{LABEL_POOL}={self.ctx.pool_name}"},
                )
            except Exception as exc:
                err = translate(exc, engine.url, "list containers")
                if isinstance(err, BackendUnavailable):
                    self._engine_failed(engine, err)
                    continue
                raise err from exc
            for row in rows:
                found.append(self._row_instance(engine, row, parked))
        return found

    def _row_instance(self, engine: Engine, row: dict[str, Any], parked: set[str]) -> Instance:
        labels = row.get("Labels") or {}
        cid = row["Id"]
        name = (row.get("Names") or [cid])[0].lstrip("/")
        ours = cid in self._by_cid or cid in parked
        port = next(
            (
                p.get("PublicPort", 0)
                for p in row.get("Ports") or []
                if p.get("PrivatePort") == self.cfg.port
            ),
            0,
        )
        return Instance(
            id=self._by_cid.get(cid) or labels.get(LABEL_INSTANCE, name),
            backend=self.name,
            endpoint=Endpoint(self.cfg.publish_host, int(port or 0)),
            ready=row.get("State") == "running",
            owner_id=self.ctx.owner_id if ours else labels.get(LABEL_OWNER, ""),
            meta={
                "engine": engine.url,
                "container": cid[:12],
                "state": str(row.get("State", "")),
                "paused_pool": "parked" if cid in parked else labels.get(LABEL_PAUSED, "false"),
            },
            handle=Container(engine, cid, name),
        )

    async def alive(self, instance: Instance) -> bool:
        c = instance.handle
        if not isinstance(c, Container) or c.engine.client is None:
            return False
        live = self._live.get(instance.id)
        if live is not None and live.dead:
            return False
        try:
            attrs = await self._thread(c.engine.client.api.inspect_container, c.id)
        except Exception:
            return False
        return bool((attrs.get("State") or {}).get("Status") == "running")

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._refill.set()
        for stream in list(self._streams.values()):
            stream.close()  # unblocks the event thread
        for task in list(self._tasks):
            if not task.get_name().startswith("docker:start:"):
                task.cancel()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._threads:  # calls whose callers were cancelled: let them land first
            await asyncio.wait(list(self._threads), timeout=60)
        # Everything this run created carries its owner label; adopted parked ones do not.
        parked = [p.container for p in self._parked]
        self._parked.clear()
        keep = {c.id for c in parked}
        sweeps = [self._sweep(e, keep) for e in self._engines if e.healthy]
        await asyncio.gather(*(self._remove(c) for c in parked), *sweeps, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        for engine in self._engines:
            engine.close()
        self._pool.shutdown(wait=False)
        self._event_pool.shutdown(wait=False)

    # -- image and leftovers -----------------------------------------------------------

    async def _ensure_image(self, engine: Engine) -> None:
        image, url = self.cfg.image, engine.url
        api = engine.client.api
        if self.cfg.pull == "always":
            await self._pull(engine)
        try:
            await self._thread(api.inspect_image, image)
            return
        except docker.errors.ImageNotFound:
            if self.cfg.pull == "never":
                raise BackendConfigError(
                    f"image {image!r} not found on Docker engine {url}; no pull was attempted "
                    f'(pull = "never"): build or load it there, or set pull = "missing"',
                    reason="image_missing",
                ) from None
        except Exception as exc:
            raise translate(exc, url, f"inspect image {image!r}") from exc
        await self._pull(engine)

    async def _pull(self, engine: Engine) -> None:
        repo, tag = parse_repository_tag(self.cfg.image)
        log.info("pulling %s on %s", self.cfg.image, engine.url)
        try:
            await self._thread(engine.client.api.pull, repo, tag=tag or "latest")
        except Exception as exc:
            raise BackendConfigError(
                f"pulling image {self.cfg.image!r} on Docker engine {engine.url} failed: {exc}",
                reason="image_missing",
            ) from exc

    async def _reap_or_adopt(self, engine: Engine) -> None:
        """Containers of this pool left by an earlier run: removed, or with adopt = true
        running ones become paused-pool members (probed, then paused) up to its size."""
        rows = await self._thread(
            engine.client.api.containers,
            all=True,
            filters={"label": f"{LABEL_POOL}={self.ctx.pool_name}"},
        )
        for row in rows:
            labels = row.get("Labels") or {}
            if labels.get(LABEL_OWNER) == self.ctx.owner_id:
                continue
            c = Container(engine, row["Id"], (row.get("Names") or ["?"])[0].lstrip("/"))
            state = row.get("State")
            if (
                self.cfg.adopt
                and state in ("running", "paused")
                and row.get("Image") == self.cfg.image
                and len(self._parked) < self.cfg.paused_pool
            ):
                try:
                    await self._adopt(c, state == "paused")
                    continue
                except BackendError as exc:
                    log.info("leftover %s not adoptable: %s", c.name, exc)
            log.info("reaping leftover container %s (owner %s)", c.name, labels.get(LABEL_OWNER))
            await self._remove(c)

    async def _adopt(self, c: Container, paused: bool) -> None:
        api = c.engine.client.api
        if paused:
            await self._thread(api.unpause, c.id)
        attrs = await self._thread(api.inspect_container, c.id)
        endpoint = self._endpoint(c.engine, attrs)
        await self._probe(c, endpoint, time.monotonic() + self.ctx.start_timeout)
        await self._thread(api.pause, c.id)
        c.engine.containers.add(c.id)
        self._parked.append(_Parked(c, endpoint))
        log.info("adopted leftover %s into the paused pool", c.name)

    async def _sweep(self, engine: Engine, keep: set[str]) -> None:
        """Remove this run's containers on an engine except `keep` (ids)."""
        rows = await self._thread(
            engine.client.api.containers,
            all=True,
            filters={"label": f"{LABEL_OWNER}={self.ctx.owner_id}"},
        )
        names = {r["Id"]: (r.get("Names") or ["?"])[0].lstrip("/") for r in rows}
        await asyncio.gather(
            *(
                self._remove(Container(engine, cid, n))
                for cid, n in names.items()
                if cid not in keep
            )
        )

    # -- paused pool -------------------------------------------------------------------

    async def _refiller(self) -> None:
        backoff = 0.5
        while not self._closing:
            await self._refill.wait()
            self._refill.clear()
            try:
                await self._fill(deadline=None)
                backoff = 0.5
            except BackendError as exc:
                log.warning("paused pool refill failed (retry in %.1fs): %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._refill.set()

    async def _fill(self, deadline: float | None) -> None:
        """Top the paused pool up, two containers at a time (the machine is small)."""
        while not self._closing:
            need = self.cfg.paused_pool - len(self._parked) - len(self._filling)
            if need <= 0:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise StartError("timed out filling the paused pool", reason="timeout")
            results = await asyncio.gather(
                *(self._park_one() for _ in range(min(need, 2))), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    if isinstance(r, BackendError):
                        raise r
                    raise StartError(f"paused pool: {r!r}") from r

    async def _park_one(self) -> None:
        engine = self._pick_engine()
        pid = f"paused-{uuid.uuid4().hex[:8]}"
        labels = {**self.ctx.labels(pid), LABEL_PAUSED: "true"}
        name = self._container_name(pid)
        try:
            cid, attrs, _ = await self._thread(self._create_started, engine, name, labels, pid)
        except Exception as exc:
            err = translate(exc, engine.url, f"start {name}")
            if isinstance(err, BackendUnavailable):
                self._engine_failed(engine, err)
            raise err from exc
        c = Container(engine, cid, name)
        engine.containers.add(cid)
        self._filling[cid] = c
        try:
            endpoint = self._endpoint(engine, attrs)
            await self._probe(c, endpoint, time.monotonic() + self.ctx.start_timeout)
            await self._thread(engine.client.api.pause, cid)
        except BaseException as exc:
            self._filling.pop(cid, None)
            await asyncio.shield(self._remove(c))
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise translate(exc, engine.url, f"park {name}") from exc
            raise
        self._filling.pop(cid, None)
        if self._closing:
            await self._remove(c)
            return
        self._parked.append(_Parked(c, endpoint))

    async def _probe(self, c: Container, endpoint: Endpoint, deadline: float) -> None:
        """GET readiness_path until 200; notice a container that exits meanwhile."""
        assert self._session is not None
        url = endpoint.url + self.ctx.readiness_path
        next_check = time.monotonic() + 0.5
        last = "no answer"
        while True:
            try:
                async with self._session.get(url) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = repr(exc)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                attrs = await self._thread(c.engine.client.api.inspect_container, c.id)
                state = attrs.get("State") or {}
                if not state.get("Running"):
                    logs = await self._thread(c.engine.logs_tail, c.id)
                    err = StartError(
                        f"container {c.name} exited before ready (exit {state.get('ExitCode')});"
                        f" last log lines:\n{logs}",
                        reason="oom" if state.get("OOMKilled") else "exited_before_ready",
                    )
                    log.warning("%s", err)
                    raise err
            if now > deadline:
                raise StartError(f"{url} not ready in time: {last}", reason="ready_timeout")
            await asyncio.sleep(0.02)

    # -- engine health and events --------------------------------------------------------

    def _engine_failed(self, engine: Engine, error: BaseException | str) -> None:
        """Mark an engine down: its instances are reported dead, its parked ones dropped."""
        if engine.healthy:
            log.warning("Docker engine %s marked unhealthy: %s", engine.url, error)
        engine.mark_down(error)
        for live in list(self._live.values()):
            if live.container.engine is engine and not (live.stopping or live.dead):
                live.dead = True
                self.ctx.on_death(live.instance.id, "engine_unreachable")
        kept = [p for p in self._parked if p.container.engine is not engine]
        if len(kept) != len(self._parked):
            self._parked = deque(kept)
            self._refill.set()

    async def _watch(self, engine: Engine) -> None:
        """Own one engine's event stream; reconnect an unhealthy engine every engine_retry."""
        loop = asyncio.get_running_loop()
        since: int | None = None
        while not self._closing:
            if not engine.healthy:
                wait = engine.retry_after - (time.monotonic() - engine.down_since)
                await asyncio.sleep(max(wait, 0.0))
                try:
                    await self._thread(engine.connect)
                except BackendError:
                    engine.down_since = time.monotonic()
                    continue
                log.info("Docker engine %s is back", engine.url)
                # Containers of ours it still holds belong to instances reported dead.
                await self._sweep(engine, keep={p.container.id for p in self._parked})
                self._refill.set()
                since = None
            try:
                stream = await self._thread(
                    engine.client.events,
                    decode=True,
                    since=since,
                    filters={"label": f"{LABEL_POOL}={self.ctx.pool_name}", "type": "container"},
                )
            except Exception as exc:
                self._engine_failed(engine, translate(exc, engine.url, "events"))
                continue
            self._streams[engine.url] = stream
            if self._closing:
                stream.close()
                return
            try:
                last = await loop.run_in_executor(
                    self._event_pool, self._pump, engine, stream, loop
                )
            finally:
                self._streams.pop(engine.url, None)
            since = last or int(time.time())
            if self._closing:
                return
            # The stream ended by itself: the engine restarted or went away.
            try:
                await self._thread(engine.client.ping)
            except Exception as exc:
                self._engine_failed(engine, f"event stream ended and ping failed: {exc}")

    def _pump(self, engine: Engine, stream: Any, loop: asyncio.AbstractEventLoop) -> int | None:
        """Thread side: forward events to the loop; return the last event's time."""
        last: int | None = None
        try:
            for event in stream:
                last = event.get("time", last)
                loop.call_soon_threadsafe(self._on_event, engine, event)
        except RuntimeError:  # the loop closed under us
            pass
        except Exception as exc:
            log.debug("event stream of %s ended: %r", engine.url, exc)
        return last

    def _on_event(self, engine: Engine, event: dict[str, Any]) -> None:
        action = event.get("Action") or event.get("status") or ""
        cid = (event.get("Actor") or {}).get("ID") or event.get("id") or ""
        if action == "oom":
            self._oomed.add(cid)
            return
        if action != "die":
            return
        code = ((event.get("Actor") or {}).get("Attributes") or {}).get("exitCode", "?")
        for p in list(self._parked):
            if p.container.id == cid:
                log.warning("paused container %s died (exit %s)", p.container.name, code)
                self._parked.remove(p)
                self._spawn(self._remove(p.container), "remove")
                self._refill.set()
                return
        iid = self._by_cid.get(cid)
        live = self._live.get(iid) if iid else None
        if live is None or live.stopping or live.dead:
            return
        live.dead = True
        self._spawn(self._report_death(live, code), f"death:{live.instance.id}")

    async def _report_death(self, live: _Live, code: str) -> None:
        c = live.container
        oom = c.id in self._oomed
        logs = ""
        try:
            # A SIGKILL (137) may be the OOM killer's: the engine's oom event and the
            # OOMKilled flag can land just after the die event, so look twice.
            for attempt in range(2 if code == "137" else 1):
                if attempt:
                    await asyncio.sleep(0.5)
                attrs = await self._thread(c.engine.client.api.inspect_container, c.id)
                oom = (
                    oom or c.id in self._oomed or bool((attrs.get("State") or {}).get("OOMKilled"))
                )
                if oom:
                    break
            logs = await self._thread(c.engine.logs_tail, c.id, 10)
        except Exception as exc:
            if is_unreachable(exc):
                self._engine_failed(c.engine, exc)
        reason = "oom" if oom else f"exited:{code}"
        log.warning(
            "container %s (instance %s) died: %s\n%s", c.name, live.instance.id, reason, logs
        )
        self.ctx.on_death(live.instance.id, reason)


def _settle(pending: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """Done-callback: forget the future and retrieve its exception (nobody else may)."""

    def done(fut: asyncio.Future[Any]) -> None:
        pending.discard(fut)
        if not fut.cancelled():
            fut.exception()

    return done
