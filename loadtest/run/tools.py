"""Find (and, as root with apt, install) the external tools the benchmark compares against."""

from __future__ import annotations

import os
import shutil

from forkproxy.loadtest.run.procs import run_captured
from forkproxy.loadtest.sections.model import say


def have(binary: str) -> bool:
    # Debian puts nginx in /usr/sbin, which a non-root PATH often lacks.
    return bool(shutil.which(binary) or os.path.exists(f"/usr/sbin/{binary}"))


async def ensure_debian_package(binary: str, package: str, allow_install: bool) -> str | None:
    """Return why `binary` is unavailable (None: it is there, installing it if allowed)."""
    if have(binary):
        return None
    if not allow_install:
        return f"`{binary}` not installed (apt-get install {package})"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"`{binary}` not installed and cannot apt-get install {package} here"
    say(f"  {binary} missing: running apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ran = await run_captured(["apt-get", "install", "-y", "-q", package], 300, env=env)
    if ran is None:
        return f"apt-get install {package} timed out"
    if ran.returncode != 0 or not have(binary):
        return f"apt-get install {package} failed: {ran.out[-300:]}"
    say(f"  installed {package} with apt-get")
    return None
