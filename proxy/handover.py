"""Listening sockets a restart does not close: handed over by systemd (socket activation,
sd_listen_fds(3) semantics), or bound with SO_REUSEPORT so the next proxy binds the same
port while this one drains (docs/reload-and-restart.md)."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
from collections.abc import MutableMapping
from dataclasses import dataclass

from forkproxy.proxy.config import Address

log = logging.getLogger("forkproxy")

SD_LISTEN_FDS_START = 3
ADMIN_NAME = "admin"  # FileDescriptorName= of the admin listener's socket
_BACKLOG = 1024
_SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # Linux >= 4.5
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k


class HandoverError(OSError):
    """An inherited descriptor is not a listening stream socket."""


@dataclass
class Inherited:
    """Listeners systemd passed in; None: open the configured address as usual."""

    listen: socket.socket | None = None
    admin: socket.socket | None = None


def from_systemd(environ: MutableMapping[str, str] | None = None) -> Inherited:
    """The sockets of $LISTEN_FDS when $LISTEN_PID is this process. An fd named `admin`
    ($LISTEN_FDNAMES) serves the admin API; of the others the first is the data listener
    and a second, when no fd is named `admin`, the admin listener (ListenStream= order).
    The variables are removed, as sd_listen_fds(1) does, so children do not see them."""
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    names = env.get("LISTEN_FDNAMES", "")
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not count.isdigit() or int(count) == 0 or pid != str(os.getpid()):
        return Inherited()
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    labels = names.split(":") if names else []
    labels += [""] * (len(fds) - len(labels))
    admin = [fd for fd, name in zip(fds, labels, strict=True) if name == ADMIN_NAME]
    data = [fd for fd, name in zip(fds, labels, strict=True) if name != ADMIN_NAME]
    if not admin and len(data) > 1:
        admin = data[1:2]
    data = data[:1]
    found = Inherited(
        listen=_adopt(data[0]) if data else None, admin=_adopt(admin[0]) if admin else None
    )
    used = set(data + admin)
    for fd in fds:
        if fd not in used:
            log.warning("ignoring socket-activated fd %d: only a listener and an admin", fd)
    return found


def _adopt(fd: int) -> socket.socket:
    os.set_inheritable(fd, False)  # sd_listen_fds sets FD_CLOEXEC: not for our children
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise HandoverError(f"fd {fd} from systemd is not a listening stream socket")
    sock.setblocking(False)
    return sock


def bind_shared(address: Address) -> socket.socket:
    """A listener with SO_REUSEPORT on `address`. New connections are steered to the
    newest socket in the port's group, so the proxy being replaced gets none once its
    successor listens and has accepted its backlog before it closes: closing a listener
    resets the connections still queued on it."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(_BACKLOG)
        _steer_to_newest(sock)  # after listen(): before it, the socket has a group of its own
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _steer_to_newest(sock: socket.socket) -> None:
    """A classic BPF program on the port's reuseport group that picks socket index 1:
    the second to join, i.e. the successor while two proxies overlap. With one socket
    the index is out of range and the kernel falls back to its hash (the only socket)."""
    insn = struct.pack("HBBI", _BPF_RET_K, 0, 0, 1)
    prog = ctypes.create_string_buffer(insn)
    fprog = struct.pack("HxxxxxxP", 1, ctypes.addressof(prog))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:  # not Linux, or an old kernel: the hash then splits the load
        log.info("reuse_port without steering to the newest listener: %s", exc)
