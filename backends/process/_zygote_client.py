"""The proxy's side of the shared zygote (zygote.py): one per event loop (one proxy),
started by the first fork-mode backend that wants it and stopped when the last one lets
it go, so several apps (Generations) share it without the proxy passing anything new.
A template it forks is not the proxy's child: ZygoteChild stands in for its
asyncio Process (pid, returncode, wait, send_signal), fed by the zygote's reports."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from forkproxy.backends.process import _messages, _procfs, leftovers
from forkproxy.backends.process._frames import FrameWriter, close_socket
from forkproxy.backends.process.log import log
from forkproxy.backends.support import nofile
from forkproxy.backends.support.kill import terminate, within
from forkproxy.backends.support.owner import gone_here
from forkproxy.backends.support.tasks import TaskSet

_BOOT = (
    "import sys; sys.path.insert(1, {root!r}); "
    "from forkproxy.backends.process.zygote import main; main()"
)
_MAX_MSG = 64 * 1024
_START_TIMEOUT = 30.0  # importing every installed framework, on a loaded box
_SEND_PATIENCE = 5.0


class ZygoteChild:
    """A template the zygote forked, shaped like asyncio.subprocess.Process for the code
    that waits for and signals templates."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        # Unreaped until the zygote reports it (then returncode is set): the pid is ours.
        if self.returncode is None:
            os.kill(self.pid, sig)


@dataclass
class Zygote:
    proc: asyncio.subprocess.Process
    sock: socket.socket
    ready: _messages.ZygoteReady
    stop_grace: float
    users: int = 0  # backends holding it (see acquire)
    children: dict[int, ZygoteChild] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[ZygoteChild]] = field(default_factory=dict)
    checks: dict[int, asyncio.Future[str]] = field(default_factory=dict)
    stopped: bool = False
    tasks: TaskSet = field(default_factory=lambda: TaskSet("forkproxy.zygote", log))
    writer: FrameWriter = field(init=False)
    tokens: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.writer = FrameWriter(self.sock)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def dead(self) -> bool:
        return self.proc.returncode is not None or self.writer.closed

    async def spawn(
        self,
        spec: dict[str, Any],
        env: dict[str, str],
        cwd: str,
        labels: dict[str, str],
        relay: bool,
    ) -> tuple[ZygoteChild, socket.socket, asyncio.StreamReader | None]:
        """Fork a template: (its process, our end of its control socket, its stderr if
        `relay`; otherwise it writes to the proxy's own)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe() if relay else (-1, os.dup(2))
        token = next(self.tokens)
        answer: asyncio.Future[ZygoteChild] = asyncio.get_running_loop().create_future()
        self.pending[token] = answer
        msg = _messages.SpawnTemplate(token, spec, env, cwd, labels)
        try:
            try:
                await self.writer.send(
                    _messages.encode(msg), [theirs.fileno(), err_w], _SEND_PATIENCE
                )
            except (BrokenPipeError, ConnectionResetError):
                # it died before we read its EOF: dead from now, so the caller replaces it
                self._gone()
                raise
            child = await asyncio.wait_for(asyncio.shield(answer), _SEND_PATIENCE)
        except BaseException:
            ours.close()
            if err_r >= 0:
                os.close(err_r)
            raise
        finally:
            self.pending.pop(token, None)
            theirs.close()
            os.close(err_w)
        ours.setblocking(False)
        return child, ours, await _stream(err_r) if err_r >= 0 else None

    async def changed(self) -> str:
        """A file it imported that changed since, or "" (also when it does not answer:
        a dead zygote is replaced anyway)."""
        token = next(self.tokens)
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.checks[token] = answer
        try:
            await self.writer.send(
                _messages.encode(_messages.CheckFresh(token)), [], _SEND_PATIENCE
            )
            return await asyncio.wait_for(answer, _SEND_PATIENCE)
        except (OSError, TimeoutError):
            return ""
        finally:
            self.checks.pop(token, None)

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self.sock, _MAX_MSG)
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = _messages.decode(data)
            except _messages.ProtocolError as exc:
                log.error("zygote: %s", exc)
                continue
            token = getattr(msg, "token", None)
            fut = self.pending.get(token) if token is not None else None
            if isinstance(msg, _messages.Spawned):
                # tracked at once: its exit may be the very next frame
                child = self.children[msg.pid] = ZygoteChild(msg.pid)
                if fut is not None and not fut.done():
                    fut.set_result(child)
                else:  # its spawner gave up: no orphan
                    child.send_signal(signal.SIGKILL)
            elif isinstance(msg, _messages.SpawnFailed):
                if fut is not None and not fut.done():
                    fut.set_exception(OSError(f"zygote: {msg.error}"))
            elif isinstance(msg, _messages.Freshness):
                check = self.checks.get(msg.token)
                if check is not None and not check.done():
                    check.set_result(msg.changed)
            elif isinstance(msg, _messages.TemplateExited) and (
                gone := self.children.pop(msg.pid, None)
            ):
                gone.exited(msg.returncode)
        self._gone()

    def _gone(self) -> None:
        """The zygote is gone: so are its templates (PDEATHSIG), if not yet reported."""
        self.writer.close()
        for check in self.checks.values():
            if not check.done():
                check.set_result("")
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(OSError("the zygote exited"))
        for child in self.children.values():
            child.exited(-signal.SIGKILL)
        self.children.clear()

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True

        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

        if self.proc.returncode is None:
            await terminate(
                f"zygote (pid {self.pid})",
                send,
                lambda secs: within(secs, self.proc.wait()),
                self.stop_grace + 2.0,
                log,
            )
        await self.tasks.aclose()
        self._gone()
        close_socket(self.sock)


async def _stream(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


def reap_leftovers() -> list[int]:
    """Kill zygotes whose proxy is proven gone (support.owner.gone_here): PDEATHSIG ends a
    zygote with its proxy, so one is left only if that failed. Their templates and
    instances die with them (their own PDEATHSIG). Blocking: run in a thread."""
    killed = []
    for found in leftovers.zygotes():
        if found.owner and gone_here(found.owner):
            with contextlib.suppress(ProcessLookupError):
                os.kill(found.pid, signal.SIGKILL)
                killed.append(found.pid)
    if killed:
        log.warning("killed zygotes left by stopped proxies: pids %s", killed)
    return killed


async def _start(
    root: str, env: dict[str, str], preload: list[str] | None, stop_grace: float
) -> Zygote:
    await asyncio.to_thread(reap_leftovers)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spec = {
        "parent_pid": os.getpid(),
        "ctl_fd": theirs.fileno(),
        "preload": preload,
        "stop_grace": stop_grace,
        "nofile": nofile.original(),  # the open-files limit it sets itself (zygote.main)
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BOOT.format(root=root),
            json.dumps(spec),
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    try:
        data = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recv(ours, _MAX_MSG), _START_TIMEOUT
        )
        ready = _messages.decode(data) if data else None
    except BaseException:
        ready = None
    if not isinstance(ready, _messages.ZygoteReady):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        ours.close()
        raise OSError(f"the zygote did not start (exit code {proc.returncode})")
    zygote = Zygote(proc, ours, ready, stop_grace)
    zygote.tasks.spawn(zygote.read_loop(), f"zygote-{proc.pid}")
    log.info(
        "zygote ready: pid %d, %d modules imported in %.0f ms",
        proc.pid,
        len(ready.preloaded),
        ready.seconds * 1000,
    )
    return zygote


def zygote_env(owner: str) -> dict[str, str]:
    """The proxy's environment, without its forkproxy labels, with the three label slots
    padded: a template forked from the zygote writes its own pool, owner and role there
    (/proc/PID/environ shows the block written at exec time; see _procfs.role_slot)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKPROXY_")}
    env[_procfs.ROLE_VAR] = _procfs.padded_role(_procfs.ROLE_ZYGOTE)
    env[leftovers.POOL_VAR] = _procfs.padded_role("")
    env[leftovers.OWNER_VAR] = _procfs.padded_role(owner)
    return env


@dataclass
class _Shared:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    zygote: Zygote | None = None  # the one new templates fork from


_shared: dict[asyncio.AbstractEventLoop, _Shared] = {}


async def acquire(
    root: str, owner: str, preload: list[str] | None, stop_grace: float, held: Zygote | None
) -> Zygote | None:
    """The zygote to fork a template from now: this proxy's, started if none runs (or it
    died), or if a new user (`held` None: an app's new generation, e.g. after a reload)
    finds a file it imported changed since (an upgrade must not be served by stale
    frameworks). None if it cannot start: the caller spawns a fresh interpreter.
    `held` is the caller's current one: the answer replaces it (one user moves over);
    pass the last answer to release() when done."""
    loop = asyncio.get_running_loop()
    shared = _shared.setdefault(loop, _Shared())
    async with shared.lock:
        current = shared.zygote
        check = current is not None and not current.dead and held is None
        if check and current is not None and (changed := await current.changed()):
            log.info("%s changed since zygote pid %d imported it: a new one", changed, current.pid)
            current = None
        if current is None or current.dead:
            old, shared.zygote = shared.zygote, None
            if old is not None and (old.dead or old.users == 0):
                await old.stop()  # the others' users move over on their next template
            try:
                shared.zygote = await _start(root, zygote_env(owner), preload, stop_grace)
            except OSError as exc:
                log.warning("no zygote (%s): templates start as fresh interpreters", exc)
        zygote = shared.zygote
        if zygote is not held:
            if zygote is not None:
                zygote.users += 1
            if held is not None:
                await _drop(shared, held)
        if shared.zygote is None:
            _shared.pop(loop, None)
        return zygote


async def _drop(shared: _Shared, zygote: Zygote) -> None:
    zygote.users -= 1
    if zygote.users <= 0:
        if shared.zygote is zygote:
            shared.zygote = None
        await zygote.stop()


async def release(zygote: Zygote) -> None:
    """One user of `zygote` fewer; its last one stops it."""
    loop = asyncio.get_running_loop()
    shared = _shared.get(loop)
    if shared is None:
        await zygote.stop()  # (it was the last: stopped, or about to be)
        return
    async with shared.lock:
        await _drop(shared, zygote)
        if shared.zygote is None:
            _shared.pop(loop, None)


def running() -> Zygote | None:
    """This loop's zygote, if one runs (for stats and tests)."""
    try:
        shared = _shared.get(asyncio.get_running_loop())
    except RuntimeError:
        return None
    return shared.zygote if shared is not None else None
