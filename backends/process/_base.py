"""What fork and exec mode share: the environment labels, list() over /proc, and
stopping a process this backend object did not start (a leftover from an earlier run)."""

from __future__ import annotations

import asyncio
import os
import time

from forkproxy.backends.base import Backend, BackendContext, Endpoint, Instance
from forkproxy.backends.process import _procfs, leftovers
from forkproxy.backends.process.config import ProcessConfig
from forkproxy.backends.process.log import log
from forkproxy.backends.support.kill import terminate

_POLL = 0.02


def base_env(config: ProcessConfig, ctx: BackendContext) -> dict[str, str]:
    """The proxy's environment minus any inherited forkproxy labels, plus config env
    and this pool's labels."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKPROXY_")}
    env.update(config.env)
    env[leftovers.POOL_VAR] = ctx.pool_name
    env[leftovers.OWNER_VAR] = ctx.owner_id
    return env


def instance_env(ctx: BackendContext, instance_id: str) -> dict[str, str]:
    return {
        leftovers.INSTANCE_VAR: instance_id,
        leftovers.POOL_VAR: ctx.pool_name,
        leftovers.OWNER_VAR: ctx.owner_id,
    }


async def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while _procfs.is_running(pid):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessBackendBase(Backend):
    name = "process"

    def __init__(self, config: ProcessConfig, ctx: BackendContext) -> None:
        self.config = config
        self.ctx = ctx

    def _found_to_instance(self, item: leftovers.Found) -> Instance:
        return Instance(
            id=item.instance_id,
            backend=self.name,
            endpoint=Endpoint(self.config.host, item.port),
            ready=False,
            owner_id=item.owner,
            meta={"kind": item.kind, "pid": str(item.pid)},
            handle=item.pid,
        )

    async def _scan(self) -> list[leftovers.Found]:
        return await asyncio.to_thread(leftovers.scan, self.ctx.pool_name)

    async def _still_ours(self, instance: Instance) -> bool:
        """The pid in `instance.handle` still is that instance (guards against pid reuse)."""
        pid = instance.handle
        if not isinstance(pid, int):
            return False
        env = await asyncio.to_thread(_procfs.read_environ, pid)
        if not env or env.get(leftovers.POOL_VAR) != self.ctx.pool_name:
            return False
        found = leftovers.classify(pid, env)
        if found is None:
            return False
        return instance.id in (found.instance_id, leftovers.unlabelled_id(pid))

    async def _stop_foreign(self, instance: Instance) -> None:
        """SIGTERM, grace, SIGKILL a listed process; its parent (if any) reaps it."""
        if not await self._still_ours(instance):
            return
        pid: int = instance.handle
        group = instance.meta.get("kind") == "exec"  # exec'd commands lead their own group
        log.info("stopping leftover %s (pid %d)", instance.id, pid)
        await terminate(
            f"leftover {instance.id} (pid {pid})",
            lambda sig: _signal(pid, sig, group),
            lambda secs: wait_gone(pid, secs),
            self.config.stop_grace,
            log,
        )

    async def _alive_foreign(self, instance: Instance) -> bool:
        return isinstance(instance.handle, int) and _procfs.is_running(instance.handle)
