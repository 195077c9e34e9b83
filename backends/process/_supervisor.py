"""What the fork template and the shared zygote have in common: a single-threaded,
loop-free parent of forks (fork copies only the calling thread). It answers the proxy on
one control socket, learns of signals through a wake pipe it select()s on, reaps its
children without blocking, and on the way out stops them: SIGTERM, a grace, SIGKILL
(backends/support/kill.py's sequence for all of them at once, without an event loop)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Collection
from typing import Any

from forkproxy.backends.process import _messages


class Supervisor:
    def __init__(self, spec: dict[str, Any], ctl: socket.socket) -> None:
        self.ctl = ctl
        self.parent = int(spec["parent_pid"])
        self.grace = float(spec["stop_grace"])
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()

    def send(self, msg: _messages.Message) -> None:
        try:
            self.ctl.send(_messages.encode(msg))
        except OSError:
            self.stopping = True  # the proxy is gone

    def recv(self, max_size: int) -> tuple[bytes, list[int]] | None:
        """One control message and the fds it carries; None if none is there yet. Empty
        data: the proxy closed the socket (or it broke), and it is done with us."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, max_size, 4)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b"", []
        if not data:
            self.stopping = True
        return data, fds

    def install_signals(self) -> None:
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy decides when we stop

    def _on_term(self, *_: object) -> None:
        self.stopping = True

    def drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass

    def orphaned(self) -> bool:
        """The proxy died and PDEATHSIG did not get us first."""
        return os.getppid() != self.parent

    def exited(self, pid: int, status: int) -> None:
        """A child was reaped (its waitpid status): forget it and tell whoever asks."""
        raise NotImplementedError

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited(pid, status)

    def stop_children(self, alive: Collection[int], grace: float) -> None:
        """SIGTERM every child in `alive` (a live view: exited() removes them), reap for
        `grace` seconds, then SIGKILL and wait for the rest."""
        for pid in list(alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            self.reap()
        for pid in list(alive):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while alive:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.exited(pid, status)
