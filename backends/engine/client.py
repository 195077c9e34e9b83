"""One Docker engine as the backends on it (docker, swarm) see it: a lazily connected SDK
client, its health (errors mark it unhealthy until `engine_retry` passes) and blocking
helpers that translate docker SDK errors into the forkproxy.backends.errors tree. Call
from threads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import docker
import docker.errors
import requests.exceptions

from forkproxy.backends.errors import BackendError, BackendUnavailable, StartError

# Seconds any one engine API call may take (the SDK's read timeout): create, start, stop
# and inspect answer in well under a second; an image pull or a `docker stop` with its
# grace can take longer. One value for every call; a config key may replace it.
ENGINE_CALL_TIMEOUT = 30  # the SDK takes whole seconds

# Daemon messages that mean the published host port was taken under us.
_PORT_CONFLICT = ("port is already allocated", "address already in use")


def is_unreachable(exc: BaseException) -> bool:
    """True for transport failures (engine down, socket gone) as opposed to API refusals."""
    if isinstance(exc, docker.errors.APIError):
        return False
    return isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | ConnectionError
        | docker.errors.DockerException,
    )


def translate(exc: Exception, url: str, what: str) -> BackendError:
    """A docker SDK / transport error → the project's error, with a counted reason."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound):
        return StartError(
            f"{what} on {url}: image not found: {exc.explanation}", reason="image_missing"
        )
    if isinstance(exc, docker.errors.APIError):
        text = str(exc.explanation or exc)
        if any(m in text.lower() for m in _PORT_CONFLICT):
            return StartError(f"{what} on {url}: {text}", reason="port_conflict")
        return StartError(f"{what} on {url}: {text}")
    if is_unreachable(exc):
        return BackendUnavailable(
            f"Docker engine {url} is unreachable ({what}): {exc}", reason="engine_unreachable"
        )
    return StartError(f"{what} on {url}: {exc!r}")


@dataclass(eq=False)
class Engine:
    url: str
    retry_after: float  # seconds an unhealthy engine is left alone
    answer_within: float = 3.0  # connect + ping (engine_timeout): a silent engine is down
    client: Any = None  # docker.DockerClient once connected
    healthy: bool = False
    down_since: float = 0.0
    last_error: str = ""
    containers: set[str] = field(default_factory=set)  # ids we placed here (live + parked)

    @property
    def publish_default_host(self) -> str:
        """Where a port published on 0.0.0.0 is reachable: the engine's host for tcp://."""
        host = urlparse(self.url).hostname
        return (
            host if self.url.startswith(("tcp://", "http://", "https://")) and host else "127.0.0.1"
        )

    def due_for_retry(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return not self.healthy and now - self.down_since >= self.retry_after

    def mark_down(self, error: BaseException | str) -> None:
        if self.healthy or not self.down_since:
            self.down_since = time.monotonic()
        self.healthy = False
        self.last_error = str(error)

    # -- blocking helpers (run them in a thread) ---------------------------------------

    def connect(self) -> None:
        """Create the client (which asks the engine its API version) and ping it, each
        within `answer_within`: an engine that accepts and never answers is down like one
        that refuses. Later calls get ENGINE_CALL_TIMEOUT (a stop or pull takes longer)."""
        try:
            if self.client is None:
                client = docker.DockerClient(
                    base_url=self.url,
                    timeout=self.answer_within,
                    use_ssh_client=self.url.startswith("ssh://"),
                )
                self.client = client
            self.client.api.timeout = self.answer_within
            self.client.ping()
            self.client.api.timeout = ENGINE_CALL_TIMEOUT
        except Exception as exc:
            self.mark_down(exc)
            raise BackendUnavailable(
                f"Docker engine {self.url} is unreachable: {exc}", reason="engine_unreachable"
            ) from exc
        self.healthy = True
        self.last_error = ""

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def logs_tail(self, container_id: str, lines: int = 20) -> str:
        try:
            raw = self.client.api.logs(container_id, tail=lines, stdout=True, stderr=True)
        except Exception as exc:
            return f"(logs unavailable: {exc})"
        return bytes(raw).decode("utf-8", "replace").rstrip()
