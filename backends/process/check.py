"""`forkproxy check-config` for the process backend: what can be known before traffic.
Fork mode builds the app in a throw-away interpreter as the template would (load, the
warmup hook, the refusal of threads), without forking; exec mode resolves the command
the way start() does. Warnings (the app will serve, but not all of it) are logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from forkproxy.backends.base import BackendContext
from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.process import _base
from forkproxy.backends.process.config import ProcessConfig
from forkproxy.backends.process.exec import ExecBackend
from forkproxy.backends.process.log import log
from forkproxy.backends.support.table import Problem

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# argv: root, app, app_kind, warmup hook or "", warm-up paths (JSON), pythonpath entries...
_BUILD = """
import json, sys
sys.path.insert(1, sys.argv[1])
sys.path[1:1] = sys.argv[6:]
from forkproxy.backends.process.child import check_app
sys.exit(check_app.main(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])))
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
    env = _base.base_env(config, BackendContext("check-config", "check-config"))
    paths = [os.path.join(config.abs_cwd, p) for p in config.pythonpath]
    # only the paths the user named: the default (the readiness path) is the pool's
    requests = json.dumps(list(config.warmup_requests or ()))
    args = [_ROOT, config.app, config.app_kind, config.warmup or "", requests, *paths]
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
    lines = res.stdout.strip().splitlines()
    for line in lines:
        if line.startswith("warning: "):
            log.warning("warning: backend.app: %s", line.removeprefix("warning: "))
    if res.returncode == 0:
        return []
    errors = [line for line in lines if not line.startswith("warning: ")]
    last = errors[-1] if errors else f"exit code {res.returncode}"
    key = "backend.app" + (" or backend.warmup" if config.warmup else "")
    return [Problem(key, f"{config.app!r} cannot be built: {last}")]
