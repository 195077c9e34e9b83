"""`forkproxy check-config` for the process backend: what can be known before traffic.
Fork mode builds the app in a throw-away interpreter (as the template would, without
forking); exec mode resolves the command the way start() does."""

from __future__ import annotations

import os
import subprocess
import sys

from backends.base import BackendContext
from backends.errors import BackendConfigError
from backends.process import _common
from backends.process.config import ProcessConfig
from backends.process.exec import ExecBackend
from backends.support.table import Problem

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Prints nothing on success; on failure the last line of the exception, like the template.
_BUILD = """
import sys, traceback
sys.path.insert(1, sys.argv[1])
sys.path[1:1] = sys.argv[5:]
try:
    from backends.process import _apps
    _apps.load(sys.argv[2], sys.argv[3])
    if sys.argv[4]:
        _apps.resolve(sys.argv[4])
except BaseException as exc:
    print(traceback.format_exception_only(type(exc), exc)[-1].strip())
    sys.exit(1)
"""
_TIMEOUT = 60.0


def check_config(config: ProcessConfig, *, imports: bool = True) -> list[Problem]:
    """Problems with their key paths (blocking: runs a subprocess)."""
    if not os.path.isdir(config.abs_cwd):
        return [Problem("backend.cwd", f"{config.cwd!r} is not a directory")]
    if config.mode == "exec":
        try:
            ExecBackend(config, BackendContext("check-config", "check-config"))._resolve(
                BackendConfigError
            )
        except BackendConfigError as exc:
            key, _, message = str(exc).partition(": ")
            return [Problem(key, message)]
        return []
    if not imports:
        return []
    env = _common.base_env(config, BackendContext("check-config", "check-config"))
    paths = [os.path.join(config.abs_cwd, p) for p in config.pythonpath]
    args = [_ROOT, config.app, config.app_kind, config.warmup or "", *paths]
    try:
        res = subprocess.run(
            [sys.executable, "-c", _BUILD, *args],
            cwd=config.abs_cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return [Problem("backend.app", f"{config.app!r}: building it took over {_TIMEOUT:.0f}s")]
    if res.returncode == 0:
        return []
    lines = res.stdout.strip().splitlines() or [f"exit code {res.returncode}"]
    key = "backend.app" + (" or backend.warmup" if config.warmup else "")
    return [Problem(key, f"{config.app!r} cannot be built: {lines[-1]}")]
