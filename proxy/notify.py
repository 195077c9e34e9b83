"""systemd's service notification protocol (sd_notify(3)), written by hand: one datagram
per state change to the AF_UNIX socket named by $NOTIFY_SOCKET, nothing when it is unset
(not under systemd with Type=notify). Also the watchdog: WATCHDOG=1 every half of
$WATCHDOG_USEC, from the event loop, so a blocked loop is what systemd sees and kills."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("forkproxy")


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):  # abstract namespace: a leading NUL byte, not a path
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # systemd also documents vsock addresses; not ours to speak


class Notifier:
    """sd_notify(0, ...) for this process; every call is a no-op without NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._addr = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog = _watchdog_interval(env)
        # children (the fork template, exec instances) must not notify in our name
        if environ is None:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(key, None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as exc:  # systemd gone or the socket full: never fatal
            log.warning("sd_notify %s failed: %s", fields[0], exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # Type=notify-reload wants the monotonic timestamp with RELOADING=1
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def keep_alive(self) -> None:
        """WATCHDOG=1 every half of the watchdog interval, until cancelled."""
        if self.watchdog is None or self._sock is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog / 2)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """$WATCHDOG_USEC in seconds, if it is meant for this process ($WATCHDOG_PID)."""
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(raw) / 1_000_000
