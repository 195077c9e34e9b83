"""Fork mode: one warm template process builds the app once; each instance is a fork
of it serving on a socket the proxy bound and listened on first. It exists at once, but
is ready only once it answers: the pool probes it like every other backend's instance
(a post_fork hook or on_startup that hangs or raises must not take traffic)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forkproxy.backends.base import BackendContext, Endpoint, Instance
from forkproxy.backends.errors import BackendConfigError, BackendUnavailable, StartError
from forkproxy.backends.process import (
    _base,
    _messages,
    _procfs,
    _template_client,
    _zygote_client,
    leftovers,
)
from forkproxy.backends.process._template_client import TemplateHandle
from forkproxy.backends.process.config import ProcessConfig
from forkproxy.backends.process.log import log
from forkproxy.backends.support import memory
from forkproxy.backends.support.kill import terminate, within
from forkproxy.backends.support.tasks import TaskSet

_BACKLOG = 1024
_GONE_POLL = 0.5  # a stop looks at the pid this often (the template may be stuck)
_MAX_ID = _procfs.ROLE_WIDTH - len(_procfs.ROLE_FORK_PREFIX)


@dataclass
class _Child:
    id: str
    port: int
    template: TemplateHandle
    started: asyncio.Future[int]  # the pid, once the template forked
    exited: asyncio.Future[str]  # the exit reason
    pid: int = 0
    stopping: bool = False
    returned: bool = False  # start() handed it to the pool: deaths go to on_death
    spare: bool = False  # it was forked ahead (prefork) rather than on this start


class ForkBackend(_base.ProcessBackendBase):
    def __init__(self, config: ProcessConfig, ctx: BackendContext) -> None:
        super().__init__(config, ctx)
        self._template: TemplateHandle | None = None
        self._template_lock = asyncio.Lock()
        self._children: dict[str, _Child] = {}
        self._tasks = TaskSet("forkproxy.backends.process", log)
        self._closing = False
        self.template_starts = 0  # > 1 means the template died, or was given back, and restarted
        self.template_give_backs = 0  # times the template was given back for lack of instances
        self.template_cost = 0.0  # seconds the last template start took (spawn to ready)
        self.template_build = 0.0  # of which the app's import and warm-up in the template
        self._held: _zygote_client.Zygote | None = None  # the zygote we count as a user of
        self.fork_cost = 0.0  # seconds the last instance start took once the template was up
        self._kind = ""  # the app's kind, kept while the template is given back
        self._idle_since: float | None = None  # monotonic time the last instance went
        self._give_back: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        tpl = f"template pid {self._template.pid}" if self._template else "no template"
        return f"<ForkBackend {tpl}, {len(self._children)} children>"

    # -- template ------------------------------------------------------------------

    async def prepare(self) -> None:
        if not await asyncio.to_thread(os.path.isdir, self.config.abs_cwd):
            raise BackendConfigError(f"backend.cwd {self.config.cwd!r} is not a directory")
        async with self._template_lock:
            if self._template is None:
                self._template = await self._start_template()

    def concurrency_hint(self) -> int | None:
        # A WSGI instance serves exactly `threads` requests at once; async apps have no
        # such ceiling, so the pool's documented default stands for them.
        return self.config.threads if self._kind == "wsgi" else None

    @property
    def spares(self) -> int:
        tpl = self._template
        return tpl.spares if tpl is not None and not tpl.dead else 0

    async def _ensure_template(self) -> TemplateHandle:
        async with self._template_lock:
            if self._template is None or self._template.dead:
                if self._closing:
                    raise StartError("backend is closing", reason="shutting_down")
                if self._template is None and self.template_give_backs:
                    log.info("starting the fork template again (it was given back)")
                else:
                    log.warning(
                        "restarting the fork template (start #%d)", self.template_starts + 1
                    )
                try:
                    self._template = await self._start_template()
                except BackendConfigError as exc:
                    raise BackendUnavailable(f"fork template cannot start: {exc}") from exc
            return self._template

    async def _start_template(self) -> TemplateHandle:
        zygote = await self._zygote()  # its own start is the proxy's, not this app's
        t0 = time.perf_counter()
        try:
            tpl = await _template_client.spawn(self.config, self.ctx, self._tasks, zygote)
        except BackendConfigError:
            if zygote is None or not zygote.dead:
                raise
            # the zygote died under us (killed, OOM): a new one, once
            zygote = await self._zygote()
            t0 = time.perf_counter()
            tpl = await _template_client.spawn(self.config, self.ctx, self._tasks, zygote)
        self.template_cost = time.perf_counter() - t0
        self.template_build = tpl.build_s
        self.template_starts += 1
        self._kind = tpl.kind
        tpl.reader = self._tasks.spawn(self._read_loop(tpl), f"process-template-{tpl.pid}")
        self._arm_give_back()  # a template nobody starts an instance from goes back too
        return tpl

    async def _zygote(self) -> _zygote_client.Zygote | None:
        """This proxy's shared zygote, if this app uses one (held until aclose)."""
        if not self.config.uses_zygote or not _template_client.fits_zygote(self.ctx):
            return None
        pre = self.config.zygote_preload
        self._held = await _zygote_client.acquire(
            _template_client.ROOT,
            self.ctx.owner_id,
            list(pre) if pre is not None else None,
            self.config.stop_grace,
            self._held,
        )
        return self._held

    # -- the template rung: given back after its app had no instance for a while ----

    def _arm_give_back(self) -> None:
        """The app has no instance from now: one waiter gives the template back after
        template_ttl unless a start comes first."""
        if self._children or self._closing:
            return
        self._idle_since = time.monotonic()
        if self._give_back is None or self._give_back.done():
            self._give_back = self._tasks.spawn(self._give_back_when_idle(), "template-ttl")

    async def _give_back_when_idle(self) -> None:
        while (since := self._idle_since) is not None:
            ttl = self.config.template_ttl(self.template_cost, self.ctx.gaps)
            if ttl == math.inf:
                return
            if (wait := since + ttl - time.monotonic()) > 0:
                await asyncio.sleep(wait)
                continue  # a start meanwhile cleared or moved _idle_since
            async with self._template_lock:
                tpl = self._template
                if self._idle_since != since:
                    continue
                self._idle_since = None
                if self._children:
                    return  # the last of them to go arms it again
                if tpl is None or tpl.dead:
                    return
                self._template = None
                self.template_give_backs += 1
                tpl.given_back = True
            log.info("giving the fork template (pid %d) back: no instance for %.3gs", tpl.pid, ttl)
            # No instance is left to report on: its reader ends now, not left waiting on a
            # socket the stop closes (a pending read on a closed socket never completes).
            if tpl.reader is not None:
                tpl.reader.cancel()
            await self._kill_template(tpl)
            return

    def ladder(self) -> dict[str, Any]:
        """The warm states and what climbing each costs, measured (seconds)."""
        tpl = self._template
        return {
            "template_up": tpl is not None and not tpl.dead,
            "template_pid": tpl.pid if tpl is not None and not tpl.dead else None,
            "template_start_s": round(self.template_cost, 4),
            "template_import_s": round(self.template_build, 4),
            "fork_s": round(self.fork_cost, 4),
            "template_starts": self.template_starts,
            "template_give_backs": self.template_give_backs,
            "template_idle_ttl_s": self.config.template_ttl(self.template_cost, self.ctx.gaps),
            "zygote": self._zygote_info(),
        }

    def _zygote_info(self) -> dict[str, Any] | None:
        zygote = self._held
        if zygote is None or zygote.dead:
            return None
        return {"pid": zygote.pid, "preload_s": round(zygote.ready.seconds, 4)}

    async def _read_loop(self, tpl: TemplateHandle) -> None:
        # Cancelled (aclose): aclose stops the template itself.
        while (msg := await _template_client.recv(tpl)) is not None:
            self._dispatch(tpl, msg)
        self._template_died(tpl)
        await self._kill_template(tpl)

    def _dispatch(self, tpl: TemplateHandle, msg: _messages.Message) -> None:
        match msg:
            case _messages.InstanceStarted(id=iid, pid=pid, spare=spare):
                child = self._children.get(iid)
                if child is not None and not child.started.done():
                    child.pid = pid
                    child.spare = spare
                    child.started.set_result(pid)
                else:  # start() gave up (timeout/cancel): do not leave an orphan serving
                    self._tasks.spawn(self._send_signal(tpl, iid, signal.SIGKILL), f"kill-{iid}")
            case _messages.InstanceError(id=iid, error=error):
                child = self._children.get(iid)
                if child is not None and not child.started.done():
                    self._forget(iid)
                    child.started.set_exception(StartError(f"fork template: {error}"))
            case _messages.InstanceExited(id=iid, reason=reason):
                self._child_exited(iid, reason)
            case _messages.InstanceWorking(id=iid, working=working):
                child = self._children.get(iid)
                if child is not None and not child.stopping:
                    try:
                        self.ctx.on_working(iid, working)
                    except Exception:
                        log.exception("on_working callback failed for %s", iid)
            case _messages.SparesWaiting(n=n):
                tpl.spares = n

    def _forget(self, iid: str) -> _Child | None:
        child = self._children.pop(iid, None)
        if child is not None and not self._children:
            self._arm_give_back()
        return child

    def _child_exited(self, iid: str, reason: str) -> None:
        child = self._forget(iid)
        if child is None:
            return
        if not child.exited.done():
            child.exited.set_result(reason)
        if child.returned and not child.stopping and not self._closing:
            log.warning("instance %s (pid %d) died: %s", iid, child.pid, reason)
            try:
                self.ctx.on_death(iid, reason)
            except Exception:
                log.exception("on_death callback failed for %s", iid)

    def _template_died(self, tpl: TemplateHandle) -> None:
        if tpl.reported:
            return
        tpl.dead = tpl.reported = True
        for child in self._children.values():
            if child.template is tpl and not child.started.done():
                child.started.set_exception(StartError("fork template died during start"))
        if not self._closing and not tpl.given_back:
            log.error("fork template pid %d died; its instances are gone", tpl.pid)
        for child in [c for c in self._children.values() if c.template is tpl]:
            self._child_exited(child.id, "template_died")

    async def _kill_template(self, tpl: TemplateHandle) -> None:
        await _template_client.kill(tpl, self.config.stop_grace)

    async def _send_signal(self, tpl: TemplateHandle, iid: str, sig: int) -> None:
        await _template_client.send_signal(tpl, iid, sig)

    async def _signal_child(self, child: _Child, sig: int) -> None:
        delivered = await _template_client.send_signal(child.template, child.id, sig)
        if delivered and sig != signal.SIGKILL:
            return
        # Not delivered (the template takes no messages), or the last resort: a kill by
        # pid, which needs no template that may be stuck.
        await asyncio.to_thread(self._kill_by_pid, child)

    @staticmethod
    def _kill_by_pid(child: _Child) -> None:
        if child.exited.done() or not child.pid:
            return
        state = _procfs.proc_state(child.pid)
        if state is None or state[1] != child.template.pid:
            return  # reaped (its exit is on the way): the pid may be someone else's now
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    async def _child_gone(self, child: _Child, secs: float) -> bool:
        """Its exit reported by the template, or (a template that takes no messages
        reaps nothing and reports nothing) a zombie or gone by its pid."""
        deadline = time.monotonic() + secs
        while True:
            if await within(min(_GONE_POLL, max(0.0, deadline - time.monotonic())), child.exited):
                return True
            if child.pid and not await asyncio.to_thread(_procfs.is_running, child.pid):
                return True
            if time.monotonic() >= deadline:
                return False

    # -- instances -----------------------------------------------------------------

    async def start(self, instance_id: str) -> Instance:
        if len(instance_id) > _MAX_ID:
            raise StartError(f"instance id longer than {_MAX_ID} characters: {instance_id!r}")
        t0 = time.perf_counter()
        self._idle_since = None  # a give-back waiting stands down
        tpl = await self._ensure_template()
        t1 = time.perf_counter()
        try:
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.bind((self.config.host, 0))
            lsock.listen(_BACKLOG)
        except OSError as exc:
            raise StartError(f"cannot listen on {self.config.host}: {exc}") from exc
        port: int = lsock.getsockname()[1]
        if instance_id in self._children:
            lsock.close()
            raise StartError(f"instance {instance_id} already exists")
        loop = asyncio.get_running_loop()
        child = _Child(instance_id, port, tpl, loop.create_future(), loop.create_future())
        # Registered before the request so an exit right after the fork is not missed.
        self._children[instance_id] = child
        msg = _messages.StartInstance(instance_id, _base.instance_env(self.ctx, instance_id))
        try:
            # The kernel duplicates the fd into the message; our copy can go right after.
            await _template_client.send(tpl, msg, [lsock.fileno()])
            pid = await asyncio.wait_for(asyncio.shield(child.started), self.ctx.start_timeout)
        except BaseException as exc:
            self._forget(instance_id)
            if child.started.done() and not child.started.exception():
                self._tasks.spawn(self._send_signal(tpl, instance_id, signal.SIGKILL), "kill")
            if isinstance(exc, TimeoutError):
                raise StartError("fork template did not answer in time") from exc
            if isinstance(exc, OSError):
                raise StartError(f"cannot reach the fork template: {exc}") from exc
            raise
        finally:
            lsock.close()
        if child.exited.done():
            raise StartError(f"instance exited at once: {child.exited.result()}")
        child.returned = True
        t2 = time.perf_counter()
        self.fork_cost = t2 - t1
        return Instance(
            id=instance_id,
            backend=self.name,
            endpoint=Endpoint(self.config.host, port),
            ready=False,  # the pool probes the readiness path (it queues in the backlog)
            owner_id=self.ctx.owner_id,
            meta={
                "kind": "fork",
                "pid": str(pid),
                "template_pid": str(tpl.pid),
                "prefork": "spare" if child.spare else "forked on start",
            },
            handle=pid,
            phases={"template": t1 - t0, "fork": t2 - t1},
        )

    async def stop(self, instance: Instance, reason: str) -> None:
        child = self._children.get(instance.id)
        if child is not None:
            await self._stop_child(child)
        elif (
            instance.meta.get("kind") == "template"
            and self._template is not None
            and (instance.handle == self._template.pid)
        ):
            tpl, self._template = self._template, None
            await self._kill_template(tpl)
        else:
            await self._stop_foreign(instance)

    async def _stop_child(self, child: _Child) -> None:
        child.stopping = True
        if child.exited.done():
            return
        await terminate(
            f"instance {child.id} (pid {child.pid})",
            lambda sig: self._signal_child(child, sig),
            lambda secs: self._child_gone(child, secs),
            self.config.stop_grace,
            log,
        )

    async def list(self) -> list[Instance]:
        # By pid, not by label: a fresh child may not have relabelled itself yet.
        ours = {c.pid: c for c in self._children.values() if c.pid}
        tpl_pid = self._template.pid if self._template is not None else 0
        result = []
        for item in await self._scan():
            child = ours.get(item.pid)
            if item.pid == tpl_pid:
                item = leftovers.Found(
                    tpl_pid, "template", leftovers.template_id(tpl_pid), item.owner
                )
            elif child is not None:
                item = leftovers.Found(item.pid, "fork", child.id, self.ctx.owner_id, child.port)
            elif item.kind == "spare" or (
                item.ppid == tpl_pid and item.instance_id == leftovers.unlabelled_id(item.pid)
            ):
                continue  # a spare (being born): not an instance; it dies with its template
            result.append(self._found_to_instance(item))
        return result

    async def memory(self, instances: Sequence[Instance]) -> dict[str, int]:
        # The fork's own pid (PSS: its share of the template's pages, all of its own);
        # processes an app spawns are not counted.
        pids = {}
        for inst in instances:
            child = self._children.get(inst.id)
            if child is not None and child.pid and not child.exited.done():
                pids[inst.id] = child.pid
        if not pids:
            return {}
        return await asyncio.to_thread(memory.measure, pids, tree=False)

    async def alive(self, instance: Instance) -> bool:
        child = self._children.get(instance.id)
        if child is not None:
            return not child.exited.done() and not child.template.dead
        return await self._alive_foreign(instance)

    async def aclose(self) -> None:
        self._closing = True
        await asyncio.gather(*(self._stop_child(c) for c in list(self._children.values())))
        async with self._template_lock:
            tpl, self._template = self._template, None
        if tpl is not None:
            await self._kill_template(tpl)
        await self._tasks.aclose()
        if self._held is not None:
            held, self._held = self._held, None
            await _zygote_client.release(held)
