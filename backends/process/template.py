"""The warm template process of fork mode: imports and builds the app once, then forks
one child per instance onto a listening socket the proxy hands over (SCM_RIGHTS).

Single-threaded and loop-free on purpose: fork() copies only the calling thread, so a
template with threads or a running event loop would hand children broken state.
With `prefork` > 0 the template keeps that many spare children forked ahead: each has
its loop running and the app started, and only waits for an instance id and a socket,
which takes the fork and the loop setup off the start path.
Protocol: the typed messages of _messages.py, one per SOCK_SEQPACKET frame on the
control socket (StartInstance carries the instance's listening socket).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from forkproxy.backends.process import _forked, _messages, _procfs
from forkproxy.backends.process._supervisor import Supervisor
from forkproxy.backends.process.child import failures
from forkproxy.backends.support import nofile

_MAX_MSG = 64 * 1024
_REFILL_AFTER = 0.02  # seconds without messages before forking spares


def exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal:{os.WTERMSIG(status)}"
    return f"exited:{os.waitstatus_to_exitcode(status)}"


class Template(Supervisor):
    def __init__(self, spec: dict[str, Any], ctl: socket.socket) -> None:
        super().__init__(spec, ctl)
        self.spec = spec
        self.children: dict[int, str] = {}  # pid -> instance id
        self.prefork = int(spec.get("prefork", 0))
        self.spares: dict[int, socket.socket] = {}  # pid -> our end of its assignment socket
        self.spare_failures = 0
        self.spares_reported = 0  # what the proxy was last told (op "spares")
        self.kind = ""
        self.app: Any = None
        self.user_app: Any = None
        # Children report a crash here (one datagram: the traceback) rather than on
        # stderr, so a crash loop prints its traceback once. Non-blocking on both ends:
        # a child never waits on a template busy forking.
        self.report_r, self.report_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.report_r.setblocking(False)
        self.report_w.setblocking(False)
        self.failures = failures.Failures(lambda text: print(text, file=sys.stderr, flush=True))
        self.pid = os.getpid()
        self.role_slot: int | None = None

    # -- setup -------------------------------------------------------------------

    def build(self) -> None:
        from forkproxy.backends.process.child import apps, forksafe, warmup

        for entry in reversed(self.spec.get("pythonpath", [])):
            sys.path.insert(1, os.path.abspath(entry))
        self.kind, self.app = apps.load(self.spec["app"], self.spec["app_kind"])
        self.user_app = self.app
        if self.spec.get("warmup"):
            apps.call_hook(self.spec["warmup"], self.app)
        warmup.run_spec(self.kind, self.app, self.spec.get("warmup_requests"))
        if self.spec.get("post_fork"):
            apps.resolve(self.spec["post_fork"])  # a typo fails now, not in every fork
        self.app = serving_form(self.kind, self.app, int(self.spec.get("threads", 1)), self.grace)
        forksafe.before_fork()
        apps.refuse_threads(self.kind)
        self.role_slot = _procfs.role_slot()
        _procfs.set_pdeathsig()  # (again) loads libc's prctl for the children
        # Move everything built so far out of the collector's reach: children then do
        # not dirty (copy) these pages when a GC pass touches their headers.
        gc.collect()
        gc.freeze()

    # -- main loop ---------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            ctl, fail = self.ctl.fileno(), self.report_r.fileno()
            # Spares are refilled only after a short quiet spell: forking one while the
            # child just assigned is booting would compete with it for the CPU.
            short = len(self.spares) < self.prefork and self.spare_failures < 3
            ready, _, _ = select.select(
                [ctl, self.wake_r, fail], [], [], _REFILL_AFTER if short else 1.0
            )
            if self.wake_r in ready:
                self.drain_wake()
            if fail in ready:
                self._read_reports()
            if ctl in ready:
                self._handle_message()
            self.reap()
            if not ready:
                self.refill()
            self._report_spares()
            if self.orphaned():
                break
        self.shutdown()

    def _report_spares(self) -> None:
        """Tell the proxy how many spares wait, when that changed (forked, assigned, died)."""
        if len(self.spares) != self.spares_reported:
            self.spares_reported = len(self.spares)
            self.send(_messages.SparesWaiting(self.spares_reported))

    def _read_reports(self) -> None:
        """Children's reports: a crash's traceback, or working after a response."""
        while True:
            try:
                # escaped, a report is at most 6 times its MAX_REPORT bytes of text
                data = self.report_r.recv(8 * failures.MAX_REPORT)
            except (BlockingIOError, InterruptedError):
                return
            try:
                msg = json.loads(data)
            except ValueError:
                msg = {"crash": data.decode(errors="replace")}
            if not isinstance(msg, dict):
                continue
            if "crash" in msg:
                self.failures.report(str(msg["crash"]))
            elif iid := self.children.get(int(msg.get("pid", 0))):
                self.send(_messages.InstanceWorking(iid, bool(msg.get("working"))))

    def _handle_message(self) -> None:
        if (got := self.recv(_MAX_MSG)) is None:
            return
        data, fds = got
        if not data:
            for fd in fds:
                os.close(fd)
            return
        msg = _messages.decode(data)
        if isinstance(msg, _messages.StartInstance):
            self.start(msg, fds)
            return
        for fd in fds:
            os.close(fd)
        if isinstance(msg, _messages.SignalInstance):
            self.signal(msg.id, msg.sig)

    def start(self, msg: _messages.StartInstance, fds: list[int]) -> None:
        iid = msg.id
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.send(_messages.InstanceError(iid, "expected exactly one socket"))
            return
        if threading.active_count() != 1:
            os.close(fds[0])
            names = ", ".join(t.name for t in threading.enumerate())
            self.send(
                _messages.InstanceError(iid, f"template has threads, refusing to fork: {names}")
            )
            return
        env = msg.env
        pid = self._assign_spare(iid, env, fds[0])
        spare = pid is not None
        if pid is None:
            try:
                pid = _forked.fork()
            except OSError as exc:
                os.close(fds[0])
                self.send(_messages.InstanceError(iid, f"fork failed: {exc}"))
                return
            if pid == 0:
                _forked.run_instance(self._inherited(), iid, env, fds[0])
        os.close(fds[0])  # the child has it; keeping it would keep a dead child's port open
        self.children[pid] = iid
        self.send(_messages.InstanceStarted(iid, pid, spare))

    def _assign_spare(self, iid: str, env: dict[str, str], fd: int) -> int | None:
        while self.spares:
            pid = next(iter(self.spares))
            conn = self.spares.pop(pid)
            try:
                socket.send_fds(conn, [json.dumps({"id": iid, "env": env}).encode()], [fd])
            except OSError:
                continue  # it died a moment ago; reap() will see it
            finally:
                conn.close()
            return pid
        return None

    def refill(self) -> None:
        """Fork spares up to `prefork`; stop trying if they keep dying unassigned."""
        while not self.stopping and len(self.spares) < self.prefork and self.spare_failures < 3:
            if threading.active_count() != 1:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                pid = _forked.fork()
            except OSError as exc:
                print(f"forkproxy template: cannot fork a spare: {exc}", file=sys.stderr)
                ours.close()
                theirs.close()
                return
            if pid == 0:
                ours.close()
                _forked.run_spare(self._inherited(), theirs)
            theirs.close()
            self.spares[pid] = ours

    def _inherited(self) -> _forked.Inherited:
        return _forked.Inherited(
            kind=self.kind,
            app=self.app,
            user_app=self.user_app,
            post_fork=self.spec.get("post_fork"),
            grace=self.grace,
            template_pid=self.pid,
            role_slot=self.role_slot,
            close_sockets=(self.ctl, self.report_r, *self.spares.values()),
            report=self.report_w,
            close_fds=(self.wake_r, self.wake_w),
        )

    def signal(self, iid: str, sig: int) -> None:
        for pid, child in self.children.items():
            if child == iid:
                # Only children not yet reaped are in the map: no pid-reuse race.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def exited(self, pid: int, status: int) -> None:
        iid = self.children.pop(pid, None)
        if iid:
            self.send(_messages.InstanceExited(iid, pid, exit_reason(status)))
        elif pid in self.spares:
            self.spares.pop(pid).close()
            self.spare_failures += 1
            print(
                f"forkproxy template: spare {pid} died unassigned ({exit_reason(status)})",
                file=sys.stderr,
            )

    def shutdown(self) -> None:
        self.stopping = True
        self._read_reports()
        for pid, conn in self.spares.items():
            conn.close()  # an unassigned spare sees EOF and exits
            self.children[pid] = ""  # waited for like the others, reported to nobody
        self.spares.clear()
        self.stop_children(self.children.keys(), self.grace)


def serving_form(kind: str, app: Any, threads: int, grace: float) -> Any:
    """`app` (loaded and warmed) as a fork serves it, with everything a fork needs imported
    here, once: a fork then imports nothing."""
    import uvloop  # noqa: F401

    from forkproxy.backends.process import _serve, _wsgi

    if kind == "asgi":
        return _serve.asgi_config(app, grace)  # needs uvicorn: fail now
    if kind == "wsgi":
        return _wsgi.prepare(app, threads)
    app.freeze()  # routes and middleware chains built once, not per child
    _serve.prime_template()
    return app


@dataclass(frozen=True)
class Built:
    """An app built the way a template builds it (see build)."""

    kind: str  # "aiohttp" | "asgi" | "wsgi"
    app: Any  # as a fork serves it
    user_app: Any  # as the user's module gave it


def build(app: str, app_kind: str = "auto", *, threads: int = 1, grace: float = 1.0) -> Built:
    """Load `app` and make it ready to serve from forks as a template does (no warm-up
    hooks, no control socket): for tools that fork like a template, e.g. the loadtest's
    forkfloor. Freeze the heap (gc.freeze) after, as a template does, if that matters."""
    from forkproxy.backends.process.child import apps

    kind, loaded = apps.load(app, app_kind)
    return Built(kind, serving_form(kind, loaded, threads, grace), loaded)


def fork_instance(built: Built, iid: str, fd: int, grace: float = 1.0) -> int:
    """Fork instance `iid` of `built`, serving on the listening socket `fd` with the very
    code a template's fork runs (minus the template's messaging); its pid, in the parent.
    The caller is its parent: it reaps it, and the fork dies with it."""
    inherited = _forked.Inherited(
        kind=built.kind,
        app=built.app,
        user_app=built.user_app,
        post_fork=None,
        grace=grace,
        template_pid=os.getpid(),
        role_slot=None,
        close_sockets=(),
        close_fds=(),
    )
    pid = _forked.fork()
    if pid == 0:
        _forked.run_instance(inherited, iid, {}, fd)
    return pid


def main() -> None:
    serve(json.loads(sys.argv[1]))


def serve(spec: dict[str, Any]) -> None:
    """Build the app and fork instances until told to stop. Run by an exec'd template
    (main) or by a fork of the zygote, whose pid is then spec["parent_pid"]."""
    nofile.restore(spec.get("nofile"))  # before the app is imported: its forks inherit it
    sys.argv = [str(a) for a in spec.get("argv") or sys.argv[:1]]  # not the spec's JSON
    _procfs.set_pdeathsig()
    if os.getppid() != int(spec["parent_pid"]):
        sys.exit(1)  # the proxy died before we could arm PDEATHSIG
    ctl = socket.socket(fileno=int(spec["ctl_fd"]))
    ctl.setblocking(True)
    tpl = Template(spec, ctl)
    started = time.perf_counter()
    try:
        tpl.build()
    except BaseException as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        error = lines[-1].strip() if lines else repr(exc)
        tpl.send(_messages.TemplateFailed(error, traceback.format_exc()))
        sys.exit(1)
    tpl.install_signals()
    build_s = time.perf_counter() - started  # the app's own import and warm-up
    tpl.send(_messages.TemplateReady(os.getpid(), tpl.kind, build_s))
    tpl.refill()
    tpl.run()


if __name__ == "__main__":
    main()
