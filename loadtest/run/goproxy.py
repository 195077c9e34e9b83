"""The Go peer: loadtest/goproxy/main.go (net/http/httputil.ReverseProxy), built with Debian's
golang-go in GOPATH mode (GO111MODULE=off, standard library only: nothing is downloaded).

The binary is cached under the user's cache directory, keyed by the source and Go version, so
a bench run builds it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

from forkproxy.loadtest.run.procs import run_captured

SOURCE = Path(__file__).resolve().parents[1] / "goproxy" / "main.go"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forkproxy-bench"


async def _go_version(go: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        go, "version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace").strip()


async def build(timeout: float = 300.0) -> Path:
    """Path of the built proxy; RuntimeError saying why when it cannot be built."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("`go` not installed (apt-get install golang-go)")
    key = hashlib.sha256(SOURCE.read_bytes() + (await _go_version(go)).encode()).hexdigest()
    binary = cache_dir() / f"goproxy-{key[:16]}"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
    env.setdefault("GOCACHE", str(cache_dir() / "gocache"))
    env.setdefault("GOPATH", str(cache_dir() / "gopath"))
    ran = await run_captured([go, "build", "-o", str(tmp), str(SOURCE)], timeout, env=env)
    if ran is None:
        raise RuntimeError(f"go build of {SOURCE.name} timed out after {timeout:.0f}s")
    if ran.returncode != 0:
        raise RuntimeError(f"go build of {SOURCE} failed:\n{ran.out}")
    tmp.replace(binary)  # atomic: a concurrent bench never runs a half-written binary
    return binary


def goproxy_argv(binary: Path, port: int, upstream: int) -> list[str]:
    return [
        str(binary),
        "-listen",
        f"127.0.0.1:{port}",
        "-upstream",
        f"http://127.0.0.1:{upstream}",
    ]


# One core, like the one nginx worker, the one HAProxy thread and forkproxy's one event loop.
ENV = {"GOMAXPROCS": "1"}
