"""Container operations of the docker backend as the event loop sees them: each blocking
SDK call (backends/docker/ops.py) runs in the backend's threads, its error comes back in
the forkproxy.backends.errors tree, and an engine found unreachable is reported to
`on_unreachable`."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import docker.errors
from docker.utils import parse_repository_tag

from forkproxy.backends.base import BackendContext, Endpoint
from forkproxy.backends.docker.config import DockerConfig
from forkproxy.backends.docker.ops import Container, create_started, remove_quietly, stop_and_remove
from forkproxy.backends.engine.client import Engine, translate
from forkproxy.backends.engine.reasons import exited_before_ready
from forkproxy.backends.engine.threads import Threads
from forkproxy.backends.engine.unpause import Unpauser
from forkproxy.backends.errors import BackendConfigError, BackendUnavailable, StartError
from forkproxy.backends.support.probe import NotReady, wait_ready

log = logging.getLogger("forkproxy.backend.docker")
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")

Unreachable = Callable[[Engine, BaseException], None]


class Containers:
    def __init__(
        self,
        cfg: DockerConfig,
        ctx: BackendContext,
        threads: Threads,
        on_unreachable: Unreachable,
    ) -> None:
        self._cfg = cfg
        self._ctx = ctx
        self._threads = threads
        self._on_unreachable = on_unreachable
        self._unpause = Unpauser(threads)

    async def aclose(self) -> None:
        await self._unpause.aclose()

    def name_for(self, instance_id: str) -> str:
        return _NAME_UNSAFE.sub("-", f"forkproxy-{self._ctx.pool_name}-{instance_id}")

    async def create(
        self, engine: Engine, instance_id: str, labels: dict[str, str]
    ) -> tuple[Container, dict[str, Any], dict[str, float]]:
        """Create and start one (see ops.create_started); it counts on `engine` from now."""
        name = self.name_for(instance_id)
        env = {"FORKPROXY_INSTANCE_ID": instance_id, "FORKPROXY_POOL": self._ctx.pool_name}
        try:
            made = await self._threads.call(create_started, engine, self._cfg, name, labels, env)
        except Exception as exc:
            # not logged here: the pool logs the failure once, with its reason
            err = translate(exc, engine.url, f"start {name}")
            if isinstance(err, BackendUnavailable):
                self._on_unreachable(engine, err)
            raise err from exc
        engine.containers.add(made[0].id)
        return made

    async def remove(self, c: Container) -> None:
        """Force-remove; it no longer counts on its engine."""
        try:
            await self._threads.call(remove_quietly, c)
        finally:
            c.engine.containers.discard(c.id)

    async def stop(self, c: Container, reason: str) -> None:
        """docker stop, then remove. An engine that is gone took the container with it (or
        it is swept when the engine is back): logged, not raised."""
        try:
            if c.engine.client is None:
                raise BackendUnavailable(f"Docker engine {c.engine.url} is not connected")
            await self._threads.call(stop_and_remove, c, self._cfg.stop_timeout)
        except Exception as exc:
            err = translate(exc, c.engine.url, f"stop {c.name}")
            if not isinstance(err, BackendUnavailable):
                raise err from exc
            log.warning("stop %s (%s): %s", c.name, reason, err)
        finally:
            c.engine.containers.discard(c.id)

    async def rows(self, engine: Engine, label: str) -> list[dict[str, Any]]:
        """`docker ps -a --filter label=...` on one engine; SDK errors untranslated."""
        rows: list[dict[str, Any]] = await self._threads.call(
            engine.client.api.containers, all=True, filters={"label": label}
        )
        return rows

    async def inspect(self, c: Container) -> dict[str, Any]:
        """docker inspect; SDK errors untranslated (callers tell unreachable from gone)."""
        attrs: dict[str, Any] = await self._threads.call(
            c.engine.client.api.inspect_container, c.id
        )
        return attrs

    async def logs(self, c: Container, lines: int) -> str:
        return await self._threads.call(c.engine.logs_tail, c.id, lines)

    async def unpause(self, c: Container) -> float:
        """Unpause; return the seconds it took."""
        t0 = time.monotonic()
        try:
            await self._unpause(c.engine, c.id)
        except Exception as exc:
            raise translate(exc, c.engine.url, "unpause") from exc
        return time.monotonic() - t0

    async def pause(self, c: Container) -> None:
        try:
            await self._threads.call(c.engine.client.api.pause, c.id)
        except Exception as exc:
            raise translate(exc, c.engine.url, f"pause {c.name}") from exc

    async def rename(self, c: Container, name: str) -> None:
        """Cosmetic (`docker ps` shows which instance it serves): a failure is only logged."""
        try:
            await self._threads.call(c.engine.client.api.rename, c.id, name)
            c.name = name
        except Exception as exc:
            log.debug("rename %s -> %s failed: %s", c.name, name, exc)

    async def wait_ready(
        self, session: aiohttp.ClientSession, c: Container, endpoint: Endpoint, deadline: float
    ) -> None:
        """The readiness probe for a container the backend warms itself (the paused pool,
        adopted leftovers) on [pool] readiness_path; a container that exits fails it."""
        next_check = time.monotonic() + 0.5

        async def exited() -> None:  # an HTTP error alone cannot tell "slow" from "gone"
            nonlocal next_check
            now = time.monotonic()
            if now < next_check:
                return
            next_check = now + 0.5
            state = (await self.inspect(c)).get("State") or {}
            if not state.get("Running"):
                err = exited_before_ready(
                    f"container {c.name}",
                    state.get("ExitCode"),
                    oom=bool(state.get("OOMKilled")),
                    logs=await self.logs(c, 20),
                )
                log.warning("%s", err)
                raise err

        url = endpoint.url + self._ctx.readiness_path
        try:
            # A local engine: polling every 20 ms costs nothing and parks containers sooner.
            await wait_ready(
                session, url, deadline=deadline, check=exited, first_delay=0.02, max_delay=0.02
            )
        except NotReady as exc:
            raise StartError(str(exc), reason="ready_timeout") from exc

    # -- the image ---------------------------------------------------------------------

    async def ensure_image(self, engine: Engine) -> None:
        image, url = self._cfg.image, engine.url
        if self._cfg.pull == "always":
            await self._pull(engine)
        try:
            await self._threads.call(engine.client.api.inspect_image, image)
            return
        except docker.errors.ImageNotFound:
            if self._cfg.pull == "never":
                raise BackendConfigError(
                    f"image {image!r} not found on Docker engine {url}; no pull was attempted "
                    f'(pull = "never"): build or load it there, or set pull = "missing"',
                    reason="image_missing",
                ) from None
        except Exception as exc:
            raise translate(exc, url, f"inspect image {image!r}") from exc
        await self._pull(engine)

    async def _pull(self, engine: Engine) -> None:
        repo, tag = parse_repository_tag(self._cfg.image)
        log.info("pulling %s on %s", self._cfg.image, engine.url)
        try:
            await self._threads.call(engine.client.api.pull, repo, tag=tag or "latest")
        except Exception as exc:
            raise BackendConfigError(
                f"pulling image {self._cfg.image!r} on Docker engine {engine.url} failed: {exc}",
                reason="image_missing",
            ) from exc
