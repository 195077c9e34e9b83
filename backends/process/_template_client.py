"""The proxy's side of the fork template: spawn it, wait for its "ready", exchange
messages (with fds) on the control socket, and stop it. No instance bookkeeping here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import forkproxy
from forkproxy.backends.base import BackendContext
from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.process import _base, _messages, _procfs, leftovers
from forkproxy.backends.process import log as output
from forkproxy.backends.process._frames import ControlTimeout, FrameWriter, close_socket
from forkproxy.backends.process._zygote_client import Zygote
from forkproxy.backends.process.config import ProcessConfig
from forkproxy.backends.process.log import log
from forkproxy.backends.support import nofile
from forkproxy.backends.support.kill import terminate, within
from forkproxy.backends.support.tasks import TaskSet

# The folder holding the forkproxy package (site-packages, or a checkout's root), so the
# template imports this very forkproxy whatever the app's folder and sys.path hold.
ROOT = str(Path(forkproxy.__file__).absolute().parents[1])
_BOOT = (
    "import sys; sys.path.insert(1, {root!r}); "
    "from forkproxy.backends.process.template import main; main()"
)
_MAX_MSG = 64 * 1024
# How long one control message may wait for room in the socket. A template that takes
# nothing for this long is stuck: a start then fails, a stop kills the pid directly.
CONTROL_TIMEOUT = 5.0


class TemplateProcess(Protocol):
    """What is used of the template's process: an asyncio Process when the proxy exec'd
    it, a _zygote_client.ZygoteChild when the zygote forked it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...


@dataclass
class TemplateHandle:
    proc: TemplateProcess
    sock: socket.socket  # non-blocking, SOCK_SEQPACKET
    zygote: bool = False  # forked from the shared zygote (not exec'd)
    kind: str = ""  # "aiohttp" | "asgi" | "wsgi"
    build_s: float = 0.0  # the app's import and warm-up, as the template measured it
    dead: bool = False  # gone or being stopped: send nothing more
    reported: bool = False  # its children were reported dead
    given_back: bool = False  # stopped for lack of instances (template_idle_ttl)
    reader: asyncio.Task[None] | None = None  # the backend's loop reading its messages
    spares: int = 0  # prefork children waiting, as the template last said (op "spares")
    writer: FrameWriter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = FrameWriter(self.sock)

    @property
    def pid(self) -> int:
        return self.proc.pid


async def send(
    tpl: TemplateHandle,
    msg: _messages.Message,
    fds: list[int] | None = None,
    patience: float = CONTROL_TIMEOUT,
) -> None:
    """One message (with fds) on the control socket, queued behind the others while it is
    full; ControlTimeout after `patience` seconds, OSError if the template is gone."""
    await tpl.writer.send(_messages.encode(msg), fds or [], patience)


async def recv(tpl: TemplateHandle) -> _messages.Message | None:
    """The next message, or None once the template is gone (or speaks no protocol)."""
    loop = asyncio.get_running_loop()
    try:
        data = await loop.sock_recv(tpl.sock, _MAX_MSG)
    except OSError:
        return None
    if not data:
        return None
    try:
        return _messages.decode(data)
    except _messages.ProtocolError as exc:
        log.error("fork template pid %d: %s", tpl.pid, exc)
        return None


async def send_signal(tpl: TemplateHandle, iid: str, sig: int) -> bool:
    """Ask the template to signal instance `iid` (it knows whether it is still unreaped).
    False if the template did not take the request: it is gone (its read loop reports the
    children) or stuck (ControlTimeout: the caller decides what to do instead)."""
    if tpl.dead:
        return False
    try:
        await send(tpl, _messages.SignalInstance(iid, int(sig)))
    except ControlTimeout:
        log.warning("fork template pid %d takes no messages; cannot signal %s", tpl.pid, iid)
        return False
    except OSError:
        return False
    return True


def _spec(config: ProcessConfig, ctx: BackendContext, parent_pid: int) -> dict[str, Any]:
    return {
        "app": config.app,
        "app_kind": config.app_kind,
        "warmup": config.warmup,
        "warmup_requests": config.warmup_spec(ctx.readiness_path),
        "post_fork": config.post_fork,
        "threads": config.threads,
        "pythonpath": [os.path.join(config.abs_cwd, p) for p in config.pythonpath],
        "prefork": config.prefork,
        "stop_grace": config.stop_grace,
        "parent_pid": parent_pid,
        "nofile": nofile.original(),  # the open-files limit it sets itself (template.serve)
        # the app sees the proxy's command line, as a gunicorn app sees gunicorn's, whether
        # the template was exec'd or forked by the zygote (whose argv is its own spec)
        "argv": sys.argv,
    }


def _env(config: ProcessConfig, ctx: BackendContext) -> dict[str, str]:
    env = _base.base_env(config, ctx)
    env[_procfs.ROLE_VAR] = _procfs.padded_role(_procfs.ROLE_TEMPLATE)
    return env


async def _exec(
    config: ProcessConfig, ctx: BackendContext, tasks: TaskSet | None
) -> TemplateHandle:
    """A fresh interpreter that imports everything itself."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    spec = {**_spec(config, ctx, os.getpid()), "ctl_fd": theirs.fileno()}
    env = _env(config, ctx)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BOOT.format(root=ROOT),
            json.dumps(spec),
            pass_fds=[theirs.fileno()],
            cwd=config.abs_cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=None if tasks is None else asyncio.subprocess.PIPE,
            start_new_session=True,  # no terminal signals: the proxy decides when it stops
        )
    except OSError as exc:
        ours.close()
        raise BackendConfigError(f"cannot start the fork template: {exc}") from exc
    finally:
        theirs.close()
    if tasks is not None:
        assert proc.stderr is not None
        tasks.spawn(output.relay(proc.stderr, "template"), f"process-template-stderr-{proc.pid}")
    ours.setblocking(False)
    return TemplateHandle(proc, ours)


async def _fork_from(
    zygote: Zygote, config: ProcessConfig, ctx: BackendContext, tasks: TaskSet | None
) -> TemplateHandle:
    """A fork of the zygote, which has the frameworks imported already: it takes the
    app's cwd, environment and labels, then imports the app alone."""
    env = _env(config, ctx)
    labels = {
        _procfs.ROLE_VAR: _procfs.ROLE_TEMPLATE,
        leftovers.POOL_VAR: ctx.pool_name,
        leftovers.OWNER_VAR: ctx.owner_id,
    }
    try:
        proc, ours, stderr = await zygote.spawn(
            _spec(config, ctx, zygote.pid), env, config.abs_cwd, labels, relay=tasks is not None
        )
    except OSError as exc:
        raise BackendConfigError(f"the zygote cannot fork the template: {exc}") from exc
    if tasks is not None and stderr is not None:
        tasks.spawn(output.relay(stderr, "template"), f"process-template-stderr-{proc.pid}")
    return TemplateHandle(proc, ours, zygote=True)


def fits_zygote(ctx: BackendContext) -> bool:
    """Its labels fit the zygote's padded slots (a pool or owner name is rarely long)."""
    return max(len(ctx.pool_name.encode()), len(ctx.owner_id.encode())) <= _procfs.ROLE_WIDTH


async def spawn(
    config: ProcessConfig,
    ctx: BackendContext,
    tasks: TaskSet | None = None,
    zygote: Zygote | None = None,
) -> TemplateHandle:
    """Start the template and wait until it has built the app (BackendConfigError if not).
    With `tasks`, its stderr, which its forks share, is a pipe read there (log.relay: the
    lines by instance); without, it is the proxy's (exec'd) or drained (forked). With
    `zygote`, the template is forked from it rather than exec'd."""
    if zygote is not None and not zygote.dead:
        tpl = await _fork_from(zygote, config, ctx, tasks)
    else:
        tpl = await _exec(config, ctx, tasks)
    proc = tpl.proc
    try:
        first = await asyncio.wait_for(recv(tpl), ctx.start_timeout)
    except (TimeoutError, asyncio.CancelledError):
        await kill(tpl, config.stop_grace)
        raise
    if not isinstance(first, _messages.TemplateReady):
        await kill(tpl, config.stop_grace)
        if not isinstance(first, _messages.TemplateFailed):
            raise BackendConfigError(
                f"fork template for {config.app!r} exited before it was ready "
                f"(exit code {proc.returncode})"
            )
        # One line a person can act on; the template's traceback only at debug level.
        log.debug("fork template failed:\n%s", first.traceback)
        keys = "backend.app" + (" or backend.warmup" if config.warmup else "")
        raise BackendConfigError(f"{keys} {config.app!r} cannot be built: {first.error}")
    tpl.kind = first.kind
    tpl.build_s = first.build_s
    log.info(
        "fork template ready: pid %d, %s app %s%s",
        proc.pid,
        tpl.kind,
        config.app,
        " (forked from the zygote)" if tpl.zygote else "",
    )
    return tpl


async def kill(tpl: TemplateHandle, grace: float) -> None:
    """SIGTERM (the template stops its children within `grace`, then exits), SIGKILL a
    second after that."""
    tpl.dead = True
    if tpl.proc.returncode is None:

        def send(sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                tpl.proc.send_signal(sig)

        await terminate(
            f"fork template (pid {tpl.proc.pid})",
            send,
            lambda secs: within(secs, tpl.proc.wait()),
            grace + 1.0,
            log,
        )
    tpl.writer.close()
    close_socket(tpl.sock)
