"""The counted reasons the backends on the Docker engine report a container's end as,
whether the engine says it in a container's State (docker) or a task's Status (swarm): a
death is `oom` or `exited:<code>`; a start that ended before it served is `oom` or
`exited_before_ready`, its error naming the exit and the app's last log lines."""

from __future__ import annotations

from forkproxy.backends.errors import StartError


def exit_reason(code: object, *, oom: bool = False) -> str:
    """`oom` for the OOM killer's work, else `exited:<code>` (`exited:?` when unknown)."""
    if oom:
        return "oom"
    return f"exited:{'?' if code is None or code == '' else code}"


def exited_before_ready(what: str, code: object, *, oom: bool, logs: str) -> StartError:
    return StartError(
        f"{what} exited before ready ({exit_reason(code, oom=oom)}); last log lines:\n{logs}",
        reason="oom" if oom else "exited_before_ready",
    )
