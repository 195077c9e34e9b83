"""Exec mode: each instance is a command (any language) started on a free port
(`{port}` in its arguments, $PORT in its environment); the pool probes readiness."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import os
import resource
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from forkproxy.backends.base import BackendContext, Endpoint, Instance
from forkproxy.backends.errors import BackendConfigError, StartError
from forkproxy.backends.process import _base, _procfs
from forkproxy.backends.process import log as output
from forkproxy.backends.process.config import ProcessConfig
from forkproxy.backends.process.log import log
from forkproxy.backends.support import nofile
from forkproxy.backends.support.kill import terminate, within
from forkproxy.backends.support.memory import measure
from forkproxy.backends.support.tasks import TaskSet

_TAIL_LINES = 20
_REASON_MAX = 300


@dataclass
class _Proc:
    id: str
    proc: asyncio.subprocess.Process
    port: int
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_TAIL_LINES)
    )
    stopping: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)


def free_port(host: str) -> int:
    # Bind-then-close leaves a tiny window in which another process could take the port;
    # the instance then fails to start and the pool retries on a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _preexec(nofile_limits: tuple[int, int] | None) -> None:
    # Runs in the child between fork and exec: die with the proxy even if it is SIGKILLed,
    # and take the open-files limit the proxy was started with, not the one it raised
    # for itself (support/nofile.py). Here, before exec, the command never sees the
    # raised one: a prlimit() on its pid after the spawn would race its own getrlimit()
    # at start, and lowering the proxy's limit around the spawn would fail concurrent
    # accepts with EMFILE. The pair is computed in the parent: one system call here.
    _procfs.set_pdeathsig()
    if nofile_limits is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile_limits)


def _program(command: tuple[str, ...]) -> str:
    # "python" means the proxy's own interpreter: the venv that has the app's dependencies.
    return sys.executable if command[0] in ("python", "python3") else command[0]


class ExecBackend(_base.ProcessBackendBase):
    def __init__(self, config: ProcessConfig, ctx: BackendContext) -> None:
        super().__init__(config, ctx)
        self._procs: dict[str, _Proc] = {}
        self._program: str | None = None  # the resolved command[0], found by prepare()
        _procfs.load_libc()  # here, not in _preexec (see load_libc)
        self._tasks = TaskSet("forkproxy.backends.process", log)
        self._closing = False

    def __repr__(self) -> str:
        return f"<ExecBackend {len(self._procs)} processes: {' '.join(self.config.command)}>"

    async def prepare(self) -> None:
        cfg = self.config
        if not await asyncio.to_thread(os.path.isdir, cfg.abs_cwd):
            raise BackendConfigError(f"backend.cwd {cfg.cwd!r} is not a directory")
        self._program = await asyncio.to_thread(self._resolve, BackendConfigError)

    def _resolve(self, error: type[BackendConfigError] | type[StartError]) -> str:
        program = _program(self.config.command)
        env_path = {**os.environ, **self.config.env}.get("PATH", os.defpath)
        if os.sep in program:
            path = os.path.join(self.config.abs_cwd, program)
            if not os.access(path, os.X_OK):
                raise error(f"backend.command: {program!r} is not an executable file")
            return path
        found = shutil.which(program, path=env_path)
        if found is None:
            raise error(f"backend.command: {program!r} not found on PATH ({env_path})")
        return found

    async def start(self, instance_id: str) -> Instance:
        if self._closing:
            raise StartError("backend is closing", reason="shutting_down")
        cfg = self.config
        t0 = time.perf_counter()
        port = free_port(cfg.host)
        args = [a.replace("{port}", str(port)) for a in cfg.command]
        program = self._program
        if program is None:
            program = await asyncio.to_thread(self._resolve, StartError)
        args[0] = program
        env = _base.base_env(cfg, self.ctx)
        env.update(_base.instance_env(self.ctx, instance_id))
        env["PORT"] = str(port)
        env[_procfs.ROLE_VAR] = _procfs.ROLE_EXEC
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=cfg.abs_cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own group: stop() signals the whole tree
                preexec_fn=functools.partial(_preexec, nofile.limits()),
            )
        except OSError as exc:
            raise StartError(f"cannot run {args[0]!r}: {exc.strerror or exc}") from exc
        entry = _Proc(instance_id, proc, port)
        self._procs[instance_id] = entry
        self._tasks.spawn(self._watch(entry), f"process-exec-{instance_id}")
        return Instance(
            id=instance_id,
            backend=self.name,
            endpoint=Endpoint(cfg.host, port),
            ready=False,  # the pool probes the readiness path
            owner_id=self.ctx.owner_id,
            meta={"kind": "exec", "pid": str(proc.pid)},
            handle=proc.pid,
            phases={"spawn": time.perf_counter() - t0},
        )

    async def _watch(self, entry: _Proc) -> None:
        """Log its output as the instance's, keep the tail, then report the exit unless
        we asked for it."""
        assert entry.proc.stderr is not None
        try:
            await output.relay(entry.proc.stderr, entry.id, lambda _, text: entry.tail.append(text))
            code = await entry.proc.wait()
        finally:
            entry.exited.set()
        self._procs.pop(entry.id, None)
        if entry.stopping or self._closing:
            return
        reason = f"exited:{code}" if code >= 0 else f"signal:{-code}"
        last = entry.tail[-1] if entry.tail else ""
        tail = "\n".join(entry.tail) or "(empty)"
        log.warning(
            "instance %s (pid %d) %s; stderr tail:\n%s", entry.id, entry.proc.pid, reason, tail
        )
        if last:
            reason = f"{reason}: {last}"[:_REASON_MAX]
        try:
            self.ctx.on_death(entry.id, reason)
        except Exception:
            log.exception("on_death callback failed for %s", entry.id)

    async def stop(self, instance: Instance, reason: str) -> None:
        entry = self._procs.get(instance.id)
        if entry is None:
            await self._stop_foreign(instance)
            return
        await self._stop_proc(entry)

    async def _stop_proc(self, entry: _Proc) -> None:
        entry.stopping = True
        pgid = entry.proc.pid
        await terminate(
            f"instance {entry.id} (pid {pgid})",
            lambda sig: _signal_group(pgid, sig),
            lambda secs: within(secs, entry.exited.wait()),
            self.config.stop_grace,
            log,
        )
        _signal_group(pgid, signal.SIGKILL)  # whatever the command left in its group

    async def list(self) -> list[Instance]:
        result = []
        for item in await self._scan():
            if item.kind == "spare":
                continue  # a fork-mode spare of the same pool name: its template is listed
            inst = self._found_to_instance(item)
            entry = self._procs.get(item.instance_id)
            if entry is not None and entry.proc.pid == item.pid:
                inst.endpoint = Endpoint(self.config.host, entry.port)
            result.append(inst)
        return result

    async def memory(self, instances: Sequence[Instance]) -> dict[str, int]:
        # The command and every process below it (a gunicorn master and its workers):
        # the instance is what its tree holds.
        pids = {}
        for inst in instances:
            entry = self._procs.get(inst.id)
            if entry is not None and entry.proc.returncode is None:
                pids[inst.id] = entry.proc.pid
        if not pids:
            return {}
        return await asyncio.to_thread(measure, pids, tree=True)

    async def alive(self, instance: Instance) -> bool:
        entry = self._procs.get(instance.id)
        if entry is not None:
            return entry.proc.returncode is None
        return await self._alive_foreign(instance)

    async def aclose(self) -> None:
        self._closing = True
        await asyncio.gather(*(self._stop_proc(e) for e in list(self._procs.values())))
        await self._tasks.aclose()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
