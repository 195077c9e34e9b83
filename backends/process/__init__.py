"""The `process` backend: instances are local processes, either forks of a warm
template (mode "fork", milliseconds) or any command on a free port (mode "exec")."""

from __future__ import annotations

from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.process.config import ProcessConfig, parse_config
from forkproxy.backends.support.table import Problem

__all__ = ["ProcessConfig", "check_config", "create_backend", "parse_config"]


def create_backend(config: ProcessConfig, ctx: BackendContext) -> Backend:
    if config.mode == "fork":
        from forkproxy.backends.process.fork import ForkBackend

        return ForkBackend(config, ctx)
    from forkproxy.backends.process.exec import ExecBackend

    return ExecBackend(config, ctx)


def check_config(config: ProcessConfig, *, imports: bool = True) -> list[Problem]:
    from forkproxy.backends.process.check import check_config as check

    return check(config, imports=imports)
