"""The reverse proxies forkproxy is measured beside: nginx, HAProxy and Go's
httputil.ReverseProxy, each in front of the same app, each on one core.

`available()` says why a peer cannot run (a missing Debian package, a failed Go build);
`start()` runs one on a free port for the length of an exit stack.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from forkproxy.loadtest.run import goproxy, haproxy, nginx
from forkproxy.loadtest.run.procs import running_on_free_port
from forkproxy.loadtest.run.tools import ensure_debian_package


@dataclass(frozen=True)
class Peer:
    name: str
    binary: str  # what must be on PATH
    package: str  # the Debian package that brings it
    settings: str  # how it is tuned, for the report


PEERS = (
    Peer("nginx", "nginx", "nginx", "1 worker, upstream keepalive 1024"),
    Peer("haproxy", "haproxy", "haproxy", "nbthread 1, http-reuse always"),
    Peer("go", "go", "golang-go", "httputil.ReverseProxy, GOMAXPROCS=1, 1024 idle upstream"),
)
PACKAGES = " ".join(p.package for p in PEERS)
# Peers run from a generated config file: (find the binary, write the config, argv).
_Find = Callable[[], str | None]
_WriteConf = Callable[[Path, int, int], Path]
_Argv = Callable[[str, Path], list[str]]
_CONFIGURED: dict[str, tuple[_Find, _WriteConf, _Argv]] = {
    "nginx": (nginx.nginx_path, nginx.write_conf, nginx.nginx_argv),
    "haproxy": (haproxy.haproxy_path, haproxy.write_conf, haproxy.haproxy_argv),
}


async def available(peer: Peer, install: bool) -> str | None:
    """None when `peer` can run (installing its package if allowed), else why not."""
    return await ensure_debian_package(peer.binary, peer.package, install)


async def start(
    peer: Peer, stack: contextlib.AsyncExitStack, work: Path, app_port: int
) -> tuple[str, str]:
    """Run `peer` in front of the app on `app_port` until `stack` closes: (base URL, command).
    RuntimeError/TimeoutError/OSError when it cannot be built or does not serve."""
    make_argv: Callable[[int], Sequence[str]]
    env: dict[str, str] | None = None
    if peer.name in _CONFIGURED:
        find, write_conf, argv = _CONFIGURED[peer.name]
        binary = find()
        if binary is None:
            raise RuntimeError(f"{peer.name} not found")

        def make_argv(port: int) -> Sequence[str]:
            return argv(binary, write_conf(work / peer.name, port, app_port))

    else:
        built = await goproxy.build()
        env = goproxy.ENV

        def make_argv(port: int) -> Sequence[str]:
            return goproxy.goproxy_argv(built, port, app_port)

    _, port = await stack.enter_async_context(
        running_on_free_port(peer.name, make_argv, work / "logs", env=env)
    )
    prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    command = f"{peer.name}: {prefix + ' ' if prefix else ''}{shlex.join(make_argv(port))}"
    return f"http://127.0.0.1:{port}", f"{command} ({peer.settings})"
