"""The warm template process of fork mode: imports and builds the app once, then forks
one child per instance onto a listening socket the proxy hands over (SCM_RIGHTS).

Single-threaded and loop-free on purpose: fork() copies only the calling thread, so a
template with threads or a running event loop would hand children broken state.
Protocol: one JSON object per SOCK_SEQPACKET message on the control socket.
  proxy -> template: {"op": "start", "id", "env"} + 1 fd | {"op": "signal", "id", "sig"}
  template -> proxy: {"op": "ready", "pid", "kind"} | {"op": "failed", "error", "traceback"}
                     {"op": "started", "id", "pid"} | {"op": "error", "id", "error"}
                     {"op": "exit", "id", "pid", "reason"}
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from backends.process import _linux

_MAX_MSG = 64 * 1024


def exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal:{os.WTERMSIG(status)}"
    return f"exited:{os.waitstatus_to_exitcode(status)}"


class Template:
    def __init__(self, spec: dict[str, Any], ctl: socket.socket) -> None:
        self.spec = spec
        self.ctl = ctl
        self.parent = int(spec["parent_pid"])
        self.grace = float(spec["stop_grace"])
        self.children: dict[int, str] = {}  # pid -> instance id
        self.kind = ""
        self.app: Any = None
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        self.pid = os.getpid()
        self.role_slot: int | None = None

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.ctl.send(json.dumps(msg).encode())
        except OSError:
            self.stopping = True  # the proxy is gone

    # -- setup -------------------------------------------------------------------

    def build(self) -> None:
        from backends.process import _apps

        for entry in reversed(self.spec.get("pythonpath", [])):
            sys.path.insert(1, os.path.abspath(entry))
        self.kind, self.app = _apps.load(self.spec["app"], self.spec["app_kind"])
        if self.kind == "asgi":
            import uvicorn  # noqa: F401 - fail now, not in every child; warm the import
        # Everything a child needs is loaded here, once: a fork then imports nothing.
        import uvloop  # noqa: F401

        from backends.process import _serve  # noqa: F401

        self.role_slot = _linux.role_slot()
        _linux.set_pdeathsig()  # (again) loads libc's prctl for the children

        if self.spec.get("warmup"):
            _apps.call_hook(self.spec["warmup"], self.app)
        # Move everything built so far out of the collector's reach: children then do
        # not dirty (copy) these pages when a GC pass touches their headers.
        gc.collect()
        gc.freeze()

    def install_signals(self) -> None:
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides when we stop

    def _on_term(self, *_: object) -> None:
        self.stopping = True

    # -- main loop ---------------------------------------------------------------

    def run(self) -> None:
        while not self.stopping:
            ctl = self.ctl.fileno()
            ready, _, _ = select.select([ctl, self.wake_r], [], [], 1.0)
            if self.wake_r in ready:
                self._drain_wake()
            if ctl in ready:
                self._handle_message()
            self.reap()
            if os.getppid() != self.parent:
                break  # the proxy died and PDEATHSIG did not get us first
        self.shutdown()

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _handle_message(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, _MAX_MSG, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self.stopping = True  # control socket closed: the proxy is done with us
            return
        msg = json.loads(data)
        if msg["op"] == "start":
            self.start(msg, fds)
        else:
            for fd in fds:
                os.close(fd)
            if msg["op"] == "signal":
                self.signal(msg["id"], int(msg["sig"]))

    def start(self, msg: dict[str, Any], fds: list[int]) -> None:
        iid = msg["id"]
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.send({"op": "error", "id": iid, "error": "expected exactly one socket"})
            return
        if threading.active_count() != 1:
            os.close(fds[0])
            names = ", ".join(t.name for t in threading.enumerate())
            error = f"template has threads, refusing to fork: {names}"
            self.send({"op": "error", "id": iid, "error": error})
            return
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fds[0])
            self.send({"op": "error", "id": iid, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self._child(iid, fds[0], msg.get("env", {}))
        os.close(fds[0])  # the child has it; keeping it would keep a dead child's port open
        self.children[pid] = iid
        self.send({"op": "started", "id": iid, "pid": pid})

    def _child(self, iid: str, fd: int, env: dict[str, str]) -> None:
        code = 0
        try:
            _linux.set_pdeathsig()
            if os.getppid() != self.pid:
                os._exit(1)
            self.ctl.close()
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.environ.update(env)
            os.environ[_linux.ROLE_VAR] = f"{_linux.ROLE_FORK_PREFIX}{iid}"
            if self.role_slot is not None:
                _linux.write_role(self.role_slot, f"{_linux.ROLE_FORK_PREFIX}{iid}")
            from backends.process import _serve

            _serve.run_child(self.kind, self.app, fd, self.grace, self.pid)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def signal(self, iid: str, sig: int) -> None:
        for pid, child in self.children.items():
            if child == iid:
                # Only children not yet reaped are in the map: no pid-reuse race.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            iid = self.children.pop(pid, None)
            if iid is not None:
                self.send({"op": "exit", "id": iid, "pid": pid, "reason": exit_reason(status)})

    def shutdown(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while self.children and time.monotonic() < deadline:
            time.sleep(0.02)
            self.reap()
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            iid = self.children.pop(pid, None)
            if iid is not None:
                self.send({"op": "exit", "id": iid, "pid": pid, "reason": exit_reason(status)})


def main() -> None:
    spec = json.loads(sys.argv[1])
    _linux.set_pdeathsig()
    if os.getppid() != int(spec["parent_pid"]):
        sys.exit(1)  # the proxy died before we could arm PDEATHSIG
    ctl = socket.socket(fileno=int(spec["ctl_fd"]))
    ctl.setblocking(True)
    tpl = Template(spec, ctl)
    try:
        tpl.build()
    except BaseException as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        tpl.send(
            {
                "op": "failed",
                "error": lines[-1].strip() if lines else repr(exc),
                "traceback": traceback.format_exc(),
            }
        )
        sys.exit(1)
    tpl.install_signals()
    tpl.send({"op": "ready", "pid": os.getpid(), "kind": tpl.kind})
    tpl.run()


if __name__ == "__main__":
    main()
