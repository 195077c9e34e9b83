"""Fork mode: one warm template process builds the app once; each instance is a fork
of it serving on a socket the proxy bound and listened on first, so it is ready at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import BackendContext, Endpoint, Instance
from backends.errors import BackendConfigError, BackendUnavailable, StartError
from backends.process import _common, _linux, _scan
from backends.process._tasks import TaskSet, log
from backends.process.config import ProcessConfig

_ROOT = str(Path(__file__).resolve().parents[2])  # so the template imports this package
_BOOT = (
    "import sys; sys.path.insert(1, {root!r}); from backends.process.template import main; main()"
)
_BACKLOG = 1024
_MAX_MSG = 64 * 1024
_KILL_WAIT = 5.0
_MAX_ID = _linux.ROLE_WIDTH - len(_linux.ROLE_FORK_PREFIX)


@dataclass
class _Child:
    id: str
    port: int
    template: _Template
    started: asyncio.Future[int]  # the pid, once the template forked
    exited: asyncio.Future[str]  # the exit reason
    pid: int = 0
    stopping: bool = False
    returned: bool = False  # start() handed it to the pool: deaths go to on_death
    spare: bool = False  # it was forked ahead (prefork) rather than on this start


@dataclass
class _Template:
    proc: asyncio.subprocess.Process
    sock: socket.socket
    kind: str = ""
    dead: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


async def _send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    """One message (with fds) on the non-blocking control socket, waiting while it is full."""
    data = json.dumps(msg).encode()
    loop = asyncio.get_running_loop()
    while True:
        try:
            socket.send_fds(sock, [data], fds or [])
            return
        except BlockingIOError:
            writable = loop.create_future()
            loop.add_writer(sock.fileno(), writable.set_result, None)
            try:
                await writable
            finally:
                loop.remove_writer(sock.fileno())


class ForkBackend(_common.ProcessBackendBase):
    def __init__(self, config: ProcessConfig, ctx: BackendContext) -> None:
        super().__init__(config, ctx)
        self._template: _Template | None = None
        self._template_lock = asyncio.Lock()
        self._children: dict[str, _Child] = {}
        self._tasks = TaskSet()
        self._closing = False
        self.template_starts = 0  # > 1 means the template died and was restarted

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

    async def _ensure_template(self) -> _Template:
        async with self._template_lock:
            if self._template is None or self._template.dead:
                if self._closing:
                    raise StartError("backend is closing", reason="shutting_down")
                log.warning("restarting the fork template (start #%d)", self.template_starts + 1)
                try:
                    self._template = await self._start_template()
                except BackendConfigError as exc:
                    raise BackendUnavailable(f"fork template cannot start: {exc}") from exc
            return self._template

    async def _start_template(self) -> _Template:
        cfg = self.config
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {
            "app": cfg.app,
            "app_kind": cfg.app_kind,
            "warmup": cfg.warmup,
            "pythonpath": [os.path.join(cfg.abs_cwd, p) for p in cfg.pythonpath],
            "prefork": cfg.prefork,
            "stop_grace": cfg.stop_grace,
            "parent_pid": os.getpid(),
            "ctl_fd": theirs.fileno(),
        }
        env = _common.base_env(cfg, self.ctx)
        env[_linux.ROLE_VAR] = _linux.padded_role(_linux.ROLE_TEMPLATE)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _BOOT.format(root=_ROOT),
                json.dumps(spec),
                pass_fds=[theirs.fileno()],
                cwd=cfg.abs_cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # no terminal signals: the proxy decides when it stops
            )
        except OSError as exc:
            ours.close()
            raise BackendConfigError(f"cannot start the fork template: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        tpl = _Template(proc, ours)
        self.template_starts += 1
        try:
            first = await asyncio.wait_for(self._recv(tpl), self.ctx.start_timeout)
        except (TimeoutError, asyncio.CancelledError):
            await self._kill_template(tpl)
            raise
        if first is None or first.get("op") != "ready":
            await self._kill_template(tpl)
            if first is None:
                code = proc.returncode
                raise BackendConfigError(
                    f"fork template for {cfg.app!r} exited before it was ready (exit code {code})"
                )
            log.error("fork template failed:\n%s", first.get("traceback", ""))
            raise BackendConfigError(f"fork template cannot build {cfg.app!r}: {first['error']}")
        tpl.kind = str(first.get("kind", ""))
        log.info("fork template ready: pid %d, %s app %s", proc.pid, tpl.kind, cfg.app)
        self._tasks.spawn(self._read_loop(tpl), f"process-template-{proc.pid}")
        return tpl

    async def _recv(self, tpl: _Template) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        try:
            data = await loop.sock_recv(tpl.sock, _MAX_MSG)
        except OSError:
            return None
        if not data:
            return None
        msg: dict[str, Any] = json.loads(data)
        return msg

    async def _read_loop(self, tpl: _Template) -> None:
        # Cancelled (aclose): aclose stops the template itself.
        while (msg := await self._recv(tpl)) is not None:
            self._dispatch(tpl, msg)
        self._template_died(tpl)
        await self._kill_template(tpl)

    def _dispatch(self, tpl: _Template, msg: dict[str, Any]) -> None:
        op, iid = msg.get("op"), str(msg.get("id", ""))
        child = self._children.get(iid)
        if op == "started":
            if child is not None and not child.started.done():
                child.pid = int(msg["pid"])
                child.spare = bool(msg.get("spare"))
                child.started.set_result(child.pid)
            else:  # start() gave up (timeout/cancel): do not leave an orphan serving
                self._tasks.spawn(self._send_signal(tpl, iid, signal.SIGKILL), f"kill-{iid}")
        elif op == "error":
            if child is not None and not child.started.done():
                self._children.pop(iid, None)
                child.started.set_exception(StartError(f"fork template: {msg.get('error')}"))
        elif op == "exit":
            self._child_exited(iid, str(msg.get("reason", "exited")))

    def _child_exited(self, iid: str, reason: str) -> None:
        child = self._children.pop(iid, None)
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

    def _template_died(self, tpl: _Template) -> None:
        if tpl.dead:
            return
        tpl.dead = True
        for child in self._children.values():
            if child.template is tpl and not child.started.done():
                child.started.set_exception(StartError("fork template died during start"))
        if not self._closing:
            log.error("fork template pid %d died; its instances are gone", tpl.pid)
        for child in [c for c in self._children.values() if c.template is tpl]:
            self._child_exited(child.id, "template_died")

    async def _kill_template(self, tpl: _Template) -> None:
        tpl.dead = True
        if tpl.proc.returncode is None:
            # SIGTERM: the template stops its children, then exits.
            with contextlib.suppress(ProcessLookupError):
                tpl.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(tpl.proc.wait(), self.config.stop_grace + 1.0)
            except TimeoutError:
                tpl.proc.kill()
                await tpl.proc.wait()
        tpl.sock.close()

    async def _send_signal(self, tpl: _Template, iid: str, sig: int) -> None:
        if tpl.dead:
            return
        # OSError: the template is gone; its read loop reports the children.
        with contextlib.suppress(OSError):
            await _send(tpl.sock, {"op": "signal", "id": iid, "sig": int(sig)})

    # -- instances -----------------------------------------------------------------

    async def start(self, instance_id: str) -> Instance:
        if len(instance_id) > _MAX_ID:
            raise StartError(f"instance id longer than {_MAX_ID} characters: {instance_id!r}")
        t0 = time.perf_counter()
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
        msg = {"op": "start", "id": instance_id, "env": _common.instance_env(self.ctx, instance_id)}
        try:
            # The kernel duplicates the fd into the message; our copy can go right after.
            await _send(tpl.sock, msg, [lsock.fileno()])
            pid = await asyncio.wait_for(asyncio.shield(child.started), self.ctx.start_timeout)
        except BaseException as exc:
            self._children.pop(instance_id, None)
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
        return Instance(
            id=instance_id,
            backend=self.name,
            endpoint=Endpoint(self.config.host, port),
            ready=True,  # the socket listened before the fork: connections queue in the kernel
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
        await self._send_signal(child.template, child.id, signal.SIGTERM)
        done, _ = await asyncio.wait({child.exited}, timeout=self.config.stop_grace)
        if done:
            return
        log.warning("instance %s ignored SIGTERM for %.1fs", child.id, self.config.stop_grace)
        await self._send_signal(child.template, child.id, signal.SIGKILL)
        done, _ = await asyncio.wait({child.exited}, timeout=_KILL_WAIT)
        if not done:
            log.error("instance %s (pid %d) did not exit after SIGKILL", child.id, child.pid)

    async def list(self) -> list[Instance]:
        # By pid, not by label: a fresh child may not have relabelled itself yet.
        ours = {c.pid: c for c in self._children.values() if c.pid}
        tpl_pid = self._template.pid if self._template is not None else 0
        result = []
        for item in await self._scan():
            child = ours.get(item.pid)
            if item.pid == tpl_pid:
                item = _scan.Found(tpl_pid, "template", _scan.template_id(tpl_pid), item.owner)
            elif child is not None:
                item = _scan.Found(item.pid, "fork", child.id, self.ctx.owner_id, child.port)
            elif item.kind == "spare" or (
                item.ppid == tpl_pid and item.instance_id == _scan.unlabelled_id(item.pid)
            ):
                continue  # a spare (being born): not an instance; it dies with its template
            result.append(self._found_to_instance(item))
        return result

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
