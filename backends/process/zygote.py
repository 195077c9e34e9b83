"""The shared zygote: one process per proxy that has imported the web frameworks and
forkproxy's serving code once, and forks each fork-mode app's template on request. A
template then costs a fork plus its own app's import, not a whole interpreter start and
every framework's import again; and it shares the frameworks' pages with its siblings.

Like the template, single-threaded and loop-free on purpose (fork copies only the calling
thread): it imports, then waits in select() for SpawnTemplate messages (_messages.py).
The fork becomes its app's template: new session, its own stderr, cwd, environment and
labels, then template.serve(). The zygote reaps its templates and reports each exit
(TemplateExited), since it, not the proxy, is their parent.

Lifetime: it dies with the proxy (PDEATHSIG, and a parent check once a second); its
templates die with it (their own PDEATHSIG) and their instances with them. SIGTERM (the
proxy closing) passes SIGTERM on to the templates left, waits `stop_grace`, then kills.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

from forkproxy.backends.process import _forked, _messages, _procfs
from forkproxy.backends.process._supervisor import Supervisor
from forkproxy.backends.process.config import ZYGOTE_FRAMEWORKS
from forkproxy.backends.support import nofile

_MAX_MSG = 256 * 1024  # a template's whole environment rides in its SpawnTemplate
# Imported whatever the apps: every template needs them (what a template's build imports).
_OWN = (
    "uvloop",
    "forkproxy.backends.process.template",
    "forkproxy.backends.process._serve",
    "forkproxy.backends.process._wsgi",
    "forkproxy.backends.process.child.apps",
    "forkproxy.backends.process.child.warmup",
)
# What an app of each framework imports beyond its top-level package.
_DEEPER = {
    "aiohttp": ("aiohttp.web",),
    "flask": ("flask", "werkzeug.serving"),
    "django": ("django.core.handlers.wsgi", "django.core.wsgi"),
    "fastapi": ("fastapi", "fastapi.routing"),
    "starlette": ("starlette.applications", "starlette.routing"),
}


def preload(names: list[str] | None) -> list[str]:
    """Import `names` (None: the frameworks of config.ZYGOTE_FRAMEWORKS that are installed)
    and forkproxy's serving modules; the ones that import, by name."""
    loaded = []
    for name in [*_OWN, *(names if names is not None else ZYGOTE_FRAMEWORKS)]:
        for module in _DEEPER.get(name, (name,)) if names is None else (name,):
            try:
                importlib.import_module(module)
            except Exception:  # not installed, or needs what only an app provides
                continue
            loaded.append(module)
    return loaded


def module_files() -> dict[str, int]:
    """The source file of every module imported so far, with its mtime (ns)."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                files[path] = os.stat(path).st_mtime_ns
    return files


def first_changed(files: dict[str, int]) -> str:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return path
        except OSError:
            return path  # removed (an upgrade moved it)
    return ""


class Zygote(Supervisor):
    def __init__(self, spec: dict[str, Any], ctl: socket.socket) -> None:
        super().__init__(spec, ctl)
        self.children: set[int] = set()
        self.files: dict[str, int] = {}  # what it imported (module_files), to tell staleness

    def run(self) -> None:
        while not self.stopping:
            ctl = self.ctl.fileno()
            ready, _, _ = select.select([ctl, self.wake_r], [], [], 1.0)
            if self.wake_r in ready:
                self.drain_wake()
            if ctl in ready:
                self._handle_message()
            self.reap()
            if self.orphaned():
                break
        self.shutdown()

    def _handle_message(self) -> None:
        if (got := self.recv(_MAX_MSG)) is None:
            return
        data, fds = got
        try:
            msg = _messages.decode(data) if data else None
            if isinstance(msg, _messages.SpawnTemplate) and len(fds) == 2:
                self.spawn(msg, fds[0], fds[1])
            elif isinstance(msg, _messages.SpawnTemplate):
                self.send(_messages.SpawnFailed(msg.token, "expected two fds"))
            elif isinstance(msg, _messages.CheckFresh):
                self.send(_messages.Freshness(msg.token, first_changed(self.files)))
            elif msg is not None:
                print(f"forkproxy zygote: unexpected {msg!r}", file=sys.stderr, flush=True)
        finally:
            for fd in fds:
                os.close(fd)  # the fork has its copies

    def spawn(self, msg: _messages.SpawnTemplate, ctl_fd: int, err_fd: int) -> None:
        if threading.active_count() != 1:
            names = ", ".join(t.name for t in threading.enumerate())
            self.send(_messages.SpawnFailed(msg.token, f"zygote has threads: {names}"))
            return
        sys.stderr.flush()
        try:
            pid = _forked.fork()
        except OSError as exc:
            self.send(_messages.SpawnFailed(msg.token, f"fork failed: {exc}"))
            return
        if pid == 0:
            self._become_template(msg, ctl_fd, err_fd)
        self.children.add(pid)
        self.send(_messages.Spawned(msg.token, pid))

    def _become_template(self, msg: _messages.SpawnTemplate, ctl_fd: int, err_fd: int) -> NoReturn:
        code = 1
        try:
            # Our plumbing first: the template must answer to the proxy only.
            self.ctl.close()
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held by fork()
            os.setsid()  # no terminal signals, as for an exec'd template
            os.dup2(err_fd, 2)
            os.close(err_fd)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            # Then the app's own world, as an exec'd template would have been given it.
            os.chdir(msg.cwd)
            os.environ.clear()
            os.environ.update(msg.env)
            for var, value in msg.labels.items():
                slot = _procfs.env_slot(var)
                if slot is None or not _procfs.write_role(slot, value):
                    raise RuntimeError(f"cannot label the template with {var}")
            importlib.invalidate_caches()  # the app's folder may have changed since we began
            serve_template({**msg.spec, "ctl_fd": ctl_fd})
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def exited(self, pid: int, status: int) -> None:
        self.children.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.send(_messages.TemplateExited(pid, code))

    def shutdown(self) -> None:
        # Templates stop their own instances within the grace they were given; this one
        # more second is theirs to report and exit.
        self.stop_children(self.children, self.grace + 1.0)


def serve_template(spec: dict[str, Any]) -> None:
    from forkproxy.backends.process import template

    template.serve(spec)


def main() -> None:
    spec = json.loads(sys.argv[1])
    nofile.restore(spec.get("nofile"))  # before the preload: the templates inherit it
    _procfs.set_pdeathsig()
    if os.getppid() != int(spec["parent_pid"]):
        sys.exit(1)  # the proxy died before we could arm PDEATHSIG
    ctl = socket.socket(fileno=int(spec["ctl_fd"]))
    ctl.setblocking(True)
    zygote = Zygote(spec, ctl)
    started = time.perf_counter()
    loaded = preload(spec.get("preload"))
    seconds = time.perf_counter() - started
    zygote.files = module_files()
    # Out of the collector's reach: templates then do not copy these pages on a GC pass.
    gc.collect()
    gc.freeze()
    zygote.install_signals()
    zygote.send(_messages.ZygoteReady(os.getpid(), loaded, seconds))
    zygote.run()


if __name__ == "__main__":
    main()
