"""The docker backend: one labelled container per instance, placed on the least loaded of
several Docker engines, plus a pool of started-probed-then-paused containers that unpause
in milliseconds (the "frozen root"). Config keys: backends/docker/config.py."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

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
from backends.docker.config import DockerConfig
from backends.docker.engine import Engine, is_unreachable, translate
from backends.docker.events import ContainerEvent, pump
from backends.docker.ops import (
    Container,
    create_started,
    endpoint_of,
    remove_quietly,
    stop_and_remove,
)
from backends.docker.probe import probe
from backends.docker.worker import Worker
from backends.errors import (
    BackendConfigError,
    BackendError,
    BackendUnavailable,
    StartError,
)

__all__ = ["LABEL_PAUSED", "DockerBackend"]

# Set at creation on paused-pool containers. Docker labels are immutable, so it stays
# after the container is taken; taken containers are renamed to the instance's name.
LABEL_PAUSED = "io.forkproxy.paused"

log = logging.getLogger("forkproxy.backend.docker")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


@dataclass(eq=False)
class _Live:
    instance: Instance
    container: Container
    stopping: bool = False  # a die event now is our doing, not a death
    dead: bool = False  # reported through on_death already


@dataclass(eq=False)
class _Parked:
    container: Container
    endpoint: Endpoint


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, config: DockerConfig, ctx: BackendContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self._engines = [Engine(url, config.engine_retry) for url in config.engines]
        self._live: dict[str, _Live] = {}  # by instance id
        self._by_cid: dict[str, str] = {}  # container id -> live instance id
        self._parked: deque[_Parked] = deque()
        self._filling = 0  # paused-pool containers being started and probed
        # Container id -> time of its last oom event. An OOM kill of a child process
        # (a CGI, a worker) leaves the container running: only an oom just before a
        # death makes that death an OOM.
        self._oomed: dict[str, float] = {}
        self._streams: dict[str, Any] = {}  # engine url -> docker CancellableStream
        self._refill = asyncio.Event()
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        self._work = Worker("docker", threads=16)
        # Event streams block a thread each for as long as they are open.
        self._events = Worker("docker-events", threads=len(self._engines))

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

    def _container_name(self, instance_id: str) -> str:
        return _NAME_UNSAFE.sub("-", f"forkproxy-{self.ctx.pool_name}-{instance_id}")

    def _pick_engine(self) -> Engine:
        healthy = [e for e in self._engines if e.healthy]
        if not healthy:
            detail = "; ".join(f"{e.url}: {e.last_error}" for e in self._engines)
            raise StartError(f"no healthy Docker engine ({detail})", reason="engine_unreachable")
        return min(healthy, key=lambda e: len(e.containers))

    async def _create(self, engine: Engine, instance_id: str, labels: dict[str, str]) -> Any:
        """create_started in a thread, errors translated; an unreachable engine is marked."""
        name = self._container_name(instance_id)
        env = {"FORKPROXY_INSTANCE_ID": instance_id, "FORKPROXY_POOL": self.ctx.pool_name}
        try:
            return await self._work.call(create_started, engine, self.cfg, name, labels, env)
        except Exception as exc:
            err = translate(exc, engine.url, f"start {name}")
            if err.reason == "exited_before_ready":
                log.warning("%s", err)
            if isinstance(err, BackendUnavailable):
                self._engine_failed(engine, err)
            raise err from exc

    # -- Backend API -------------------------------------------------------------------

    async def prepare(self) -> None:
        try:
            await self._prepare()
        except BaseException:
            await self.aclose()  # a proxy that exits on this error leaks no container
            raise

    async def _prepare(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        results = await asyncio.gather(
            *(self._work.call(e.connect) for e in self._engines), return_exceptions=True
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
            self._work.spawn(self._watch(engine), f"events:{engine.url}")
        if self.cfg.paused_pool:
            try:
                await self._fill(deadline=time.monotonic() + self.ctx.start_timeout * 2)
            except BackendError as exc:
                raise BackendConfigError(
                    f"the paused pool could not be filled from image {self.cfg.image!r}: {exc}"
                ) from exc
            self._work.spawn(self._refiller(), "refill")

    async def start(self, instance_id: str) -> Instance:
        if self._closing:
            raise StartError("docker backend is closing", reason="closing")
        # The pool wraps start() in a timeout: run the start as an owned task so a
        # cancelled caller cannot leak a container that is made a moment later.
        task = self._work.spawn(self._start(instance_id), f"start:{instance_id}")
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._stop_orphan)
            raise

    async def _start(self, instance_id: str) -> Instance:
        while self._parked:
            parked = self._parked.popleft()
            self._refill.set()
            try:
                return await self._take(parked, instance_id)
            except BackendError as exc:
                log.warning("paused container %s unusable: %s", parked.container.name, exc)
                self._work.spawn(self._remove(parked.container), "remove")
        return await self._cold_start(instance_id)

    def _stop_orphan(self, task: asyncio.Task[Instance]) -> None:
        if task.cancelled() or task.exception() is not None or self._closing:
            return
        inst = task.result()
        self._work.spawn(self.stop(inst, "abandoned"), f"stop:{inst.id}")

    async def _take(self, parked: _Parked, instance_id: str) -> Instance:
        c = parked.container
        t0 = time.monotonic()
        try:
            await self._work.call(c.engine.client.api.unpause, c.id)
        except Exception as exc:
            raise translate(exc, c.engine.url, "unpause") from exc
        inst = self._register(instance_id, c, parked.endpoint, ready=True)
        inst.phases = {"unpause": time.monotonic() - t0}
        inst.meta["from"] = "paused_pool"
        # The name is cosmetic (labels are immutable and keep the parking id): rename off
        # the hot path so `docker ps` shows which instance a container now serves.
        self._work.spawn(self._rename(c, self._container_name(instance_id)), "rename")
        return inst

    async def _rename(self, c: Container, name: str) -> None:
        try:
            await self._work.call(c.engine.client.api.rename, c.id, name)
            c.name = name
        except Exception as exc:
            log.debug("rename %s -> %s failed: %s", c.name, name, exc)

    async def _cold_start(self, instance_id: str) -> Instance:
        tried: set[str] = set()
        while True:
            engine = self._pick_engine()
            tried.add(engine.url)
            try:
                c, attrs, phases = await self._create(
                    engine, instance_id, self.ctx.labels(instance_id)
                )
            except BackendUnavailable as exc:  # try the next engine, if any is left
                if all(e.url in tried or not e.healthy for e in self._engines):
                    raise StartError(str(exc), reason="engine_unreachable") from exc
                continue
            engine.containers.add(c.id)
            try:
                endpoint = endpoint_of(self.cfg, engine, attrs)
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
            await self._work.call(stop_and_remove, c, self.cfg.stop_timeout)
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
        self._oomed.pop(c.id, None)

    async def _remove(self, c: Container) -> None:
        try:
            await self._work.call(remove_quietly, c)
        finally:
            self._forget(c)

    async def _pool_rows(self, engine: Engine, label: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._work.call(
            engine.client.api.containers, all=True, filters={"label": label}
        )
        return rows

    async def list(self) -> list[Instance]:
        found: list[Instance] = []
        parked = {p.container.id for p in self._parked}
        for engine in self._engines:
            if not engine.healthy:
                continue
            try:
                rows = await self._pool_rows(engine, f"{LABEL_POOL}={self.ctx.pool_name}")
            except Exception as exc:
                err = translate(exc, engine.url, "list containers")
                if isinstance(err, BackendUnavailable):
                    self._engine_failed(engine, err)
                    continue
                raise err from exc
            found.extend(self._row_instance(engine, row, parked) for row in rows)
        return found

    def _row_instance(self, engine: Engine, row: dict[str, Any], parked: set[str]) -> Instance:
        labels = row.get("Labels") or {}
        cid = row["Id"]
        name = (row.get("Names") or [cid])[0].lstrip("/")
        ours = cid in self._by_cid or cid in parked
        ports = row.get("Ports") or []
        port = next(
            (p.get("PublicPort", 0) for p in ports if p.get("PrivatePort") == self.cfg.port), 0
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
            attrs = await self._work.call(c.engine.client.api.inspect_container, c.id)
        except Exception:
            return False
        return bool((attrs.get("State") or {}).get("Status") == "running")

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._refill.set()
        for stream in list(self._streams.values()):
            stream.close()  # ends the blocking read in the event thread
        # Cold starts in flight finish (their containers are swept below); the rest stop.
        await self._work.drain(keep=lambda t: ":start:" in t.get_name(), calls_within=60)
        await self._events.drain(keep=lambda t: False, calls_within=10)
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
        self._work.shutdown()
        self._events.shutdown()

    # -- image and leftovers -----------------------------------------------------------

    async def _ensure_image(self, engine: Engine) -> None:
        image, url = self.cfg.image, engine.url
        if self.cfg.pull == "always":
            await self._pull(engine)
        try:
            await self._work.call(engine.client.api.inspect_image, image)
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
            await self._work.call(engine.client.api.pull, repo, tag=tag or "latest")
        except Exception as exc:
            raise BackendConfigError(
                f"pulling image {self.cfg.image!r} on Docker engine {engine.url} failed: {exc}",
                reason="image_missing",
            ) from exc

    async def _reap_or_adopt(self, engine: Engine) -> None:
        """Containers of this pool left by an earlier run: removed, or with adopt = true
        running ones become paused-pool members (probed, then paused) up to its size."""
        for row in await self._pool_rows(engine, f"{LABEL_POOL}={self.ctx.pool_name}"):
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
            await self._work.call(api.unpause, c.id)
        attrs = await self._work.call(api.inspect_container, c.id)
        endpoint = endpoint_of(self.cfg, c.engine, attrs)
        await self._probe(c, endpoint)
        await self._work.call(api.pause, c.id)
        c.engine.containers.add(c.id)
        self._parked.append(_Parked(c, endpoint))
        log.info("adopted leftover %s into the paused pool", c.name)

    async def _sweep(self, engine: Engine, keep: set[str]) -> None:
        """Remove this run's containers on an engine except `keep` (ids)."""
        rows = await self._pool_rows(engine, f"{LABEL_OWNER}={self.ctx.owner_id}")
        gone = [
            Container(engine, r["Id"], (r.get("Names") or ["?"])[0].lstrip("/"))
            for r in rows
            if r["Id"] not in keep
        ]
        await asyncio.gather(*(self._remove(c) for c in gone))

    # -- paused pool -------------------------------------------------------------------

    async def _probe(self, c: Container, endpoint: Endpoint) -> None:
        assert self._session is not None, "prepare() first"
        deadline = time.monotonic() + self.ctx.start_timeout
        await probe(self._session, self._work, c, endpoint, self.ctx.readiness_path, deadline)

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
            need = self.cfg.paused_pool - len(self._parked) - self._filling
            if need <= 0:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise StartError("timed out filling the paused pool", reason="timeout")
            results = await asyncio.gather(
                *(self._park_one() for _ in range(min(need, 2))), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BackendError):
                    raise r
                if isinstance(r, BaseException):
                    raise StartError(f"paused pool: {r!r}") from r

    async def _park_one(self) -> None:
        pid = f"paused-{uuid.uuid4().hex[:8]}"
        engine = self._pick_engine()
        self._filling += 1
        try:
            c, attrs, _ = await self._create(
                engine, pid, {**self.ctx.labels(pid), LABEL_PAUSED: "true"}
            )
            engine.containers.add(c.id)
            try:
                endpoint = endpoint_of(self.cfg, engine, attrs)
                await self._probe(c, endpoint)
                await self._work.call(engine.client.api.pause, c.id)
            except BaseException as exc:
                await asyncio.shield(self._remove(c))
                if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                    raise translate(exc, engine.url, f"park {c.name}") from exc
                raise
        finally:
            self._filling -= 1
        if self._closing:
            await self._remove(c)
            return
        self._parked.append(_Parked(c, endpoint))

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
                    await self._work.call(engine.connect)
                except BackendError:
                    continue  # connect() marked it down again: wait another engine_retry
                log.info("Docker engine %s is back", engine.url)
                # Containers of ours it still holds belong to instances reported dead.
                await self._sweep(engine, keep={p.container.id for p in self._parked})
                self._refill.set()
                since = None
            try:
                stream = await self._work.call(
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
            deliver = self._on_event
            try:
                last = await self._events.call(pump, stream, loop, deliver, engine.url)
            finally:
                self._streams.pop(engine.url, None)
            since = last or int(time.time())
            if self._closing:
                return
            # The stream ended by itself: the engine restarted or went away.
            try:
                await self._work.call(engine.client.ping)
            except Exception as exc:
                self._engine_failed(engine, f"event stream ended and ping failed: {exc}")

    def _on_event(self, event: ContainerEvent) -> None:
        cid = event.container_id
        if event.action == "oom":
            self._oomed[cid] = time.monotonic()
            return
        if event.action != "die":
            return
        for p in list(self._parked):
            if p.container.id == cid:
                log.warning("paused container %s died (exit %s)", p.container.name, event.exit_code)
                self._parked.remove(p)
                self._work.spawn(self._remove(p.container), "remove")
                self._refill.set()
                return
        iid = self._by_cid.get(cid)
        live = self._live.get(iid) if iid else None
        if live is None or live.stopping or live.dead:
            return
        live.dead = True
        self._work.spawn(self._report_death(live, event.exit_code), f"death:{live.instance.id}")

    def _recent_oom(self, cid: str) -> bool:
        return time.monotonic() - self._oomed.get(cid, -1e9) < 2.0

    async def _report_death(self, live: _Live, code: str) -> None:
        c = live.container
        oom = self._recent_oom(c.id)
        logs = ""
        try:
            # A SIGKILL (137) may be the OOM killer's: the engine's oom event and the
            # OOMKilled flag can land just after the die event, so look twice.
            for attempt in range(2 if code == "137" else 1):
                if attempt:
                    await asyncio.sleep(0.5)
                attrs = await self._work.call(c.engine.client.api.inspect_container, c.id)
                state = attrs.get("State") or {}
                oom = oom or self._recent_oom(c.id) or bool(state.get("OOMKilled"))
                if oom:
                    break
            logs = await self._work.call(c.engine.logs_tail, c.id, 10)
        except Exception as exc:
            if is_unreachable(exc):
                self._engine_failed(c.engine, exc)
        reason = "oom" if oom else f"exited:{code or '?'}"
        log.warning(
            "container %s (instance %s) died: %s\n%s", c.name, live.instance.id, reason, logs
        )
        self.ctx.on_death(live.instance.id, reason)
