"""The first moments of a fork of the template: cut the template's plumbing, take
a label (instance or spare), then serve. Never returns: the fork always _exits."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from forkproxy.backends.process import _procfs, _serve
from forkproxy.backends.process import log as output
from forkproxy.backends.process.child import failures, forksafe


@dataclass(frozen=True)
class Inherited:
    """What a fork gets from its template and must either use or close."""

    kind: str  # "aiohttp" | "asgi" | "wsgi"
    app: Any  # aiohttp Application, loaded uvicorn Config or _wsgi.WsgiApp
    user_app: Any  # the app as the user's module gave it (for the post_fork hook)
    post_fork: str | None
    grace: float
    template_pid: int
    role_slot: int | None  # see _procfs.role_slot
    close_sockets: tuple[socket.socket, ...]  # the template's control/spare sockets
    close_fds: tuple[int, ...]  # its signal wake-up pipe
    report: socket.socket | None = None  # where a crash's traceback goes (not: stderr)


def fork() -> int:
    """os.fork() with SIGTERM held across it. Until _detach runs, the child still has the
    template's SIGTERM handler, which would swallow a stop sent the moment the fork
    returns (the pool may drain an instance as soon as it is started); held, the signal
    waits and meets the child's own disposition instead."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return pid


def label_instance(role_slot: int | None, iid: str, env: dict[str, str]) -> None:
    """Become instance `iid`: its env for the app, its label for list()."""
    os.environ.update(env)
    os.environ[_procfs.ROLE_VAR] = f"{_procfs.ROLE_FORK_PREFIX}{iid}"
    output.attribute(iid)
    if role_slot is not None:
        _procfs.write_role(role_slot, f"{_procfs.ROLE_FORK_PREFIX}{iid}")


def _detach(inh: Inherited) -> None:
    _procfs.set_pdeathsig()
    if os.getppid() != inh.template_pid:
        os._exit(1)  # the template died before PDEATHSIG was armed
    for sock in inh.close_sockets:
        sock.close()
    signal.set_wakeup_fd(-1)
    for fd in inh.close_fds:
        os.close(fd)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # held since fork(): one sent meanwhile ends the process now, by default disposition
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _run(inh: Inherited, setup: Callable[[], _serve.Acquire], spare: bool) -> NoReturn:
    code = 0
    try:
        _detach(inh)
        forksafe.after_fork(inh.post_fork, inh.user_app)
        acquire = setup()
        _serve.run_child(
            inh.kind,
            inh.app,
            acquire,
            inh.grace,
            inh.template_pid,
            spare=spare,
            report=inh.report,
        )
    except _serve.StartupFailed as exc:
        _report(inh.report, str(exc))
        code = 1
    except BaseException:
        _report(inh.report, traceback.format_exc())
        code = 1
    finally:
        _serve.exit_now(code)


def _report(to: socket.socket | None, text: str) -> None:
    """The traceback to the template, which prints it unless it is a repeat; on stderr
    if the template cannot take it now."""
    tail = text.encode(errors="replace")[-failures.MAX_REPORT :].decode(errors="ignore")
    data = json.dumps({"crash": tail}, ensure_ascii=False).encode()
    try:
        if to is None:
            raise OSError("no template to report to")
        to.send(data)
    except OSError:
        sys.stderr.write(text)


def run_instance(inh: Inherited, iid: str, env: dict[str, str], fd: int) -> NoReturn:
    """A fork made for instance `iid`, serving on listening socket `fd`."""

    def setup() -> _serve.Acquire:
        label_instance(inh.role_slot, iid, env)
        return _serve.socket_now(fd)

    _run(inh, setup, spare=False)


def run_spare(inh: Inherited, assign: socket.socket) -> NoReturn:
    """A fork made ahead of demand: it waits on `assign` for an id and a socket."""

    def setup() -> _serve.Acquire:
        # Until this runs (microseconds after the fork) /proc shows the child as a
        # "template"; leftovers.py tells it apart by its parent.
        if inh.role_slot is not None:
            _procfs.write_role(inh.role_slot, _procfs.ROLE_SPARE)

        def on_assign(data: bytes) -> None:
            msg = json.loads(data)
            label_instance(inh.role_slot, msg["id"], msg.get("env", {}))

        return _serve.socket_from_template(assign, on_assign)

    _run(inh, setup, spare=True)
