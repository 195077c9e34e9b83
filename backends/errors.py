"""One error tree for every backend; backends translate SDK errors into these at the boundary.

`reason` is a short, stable, snake_case word the proxy uses as a metric label
(`forkproxy_instance_starts_total{result=...}`), so keep the set small.
"""

from __future__ import annotations


class BackendError(Exception):
    """Anything a backend could not do. `reason` is a metric label."""

    reason: str = "backend_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class StartError(BackendError):
    """An instance could not be started (the pool retries with backoff)."""

    reason = "start_failed"


class StopError(BackendError):
    reason = "stop_failed"


class BackendUnavailable(BackendError):
    """The engine / vCenter / template cannot be reached at all."""

    reason = "backend_unavailable"


class BackendConfigError(BackendError):
    """Startup validation found the backend's world does not match its config
    (image missing, parent VM missing, placement missing...). The proxy exits."""

    reason = "config"
