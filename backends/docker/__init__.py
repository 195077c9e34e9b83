"""The `docker` backend: a labelled container per instance, plus a pool of paused
containers that unpause in milliseconds. The docker SDK is imported only when used."""

from __future__ import annotations

from backends.base import Backend, BackendContext
from backends.docker.config import DockerConfig, parse_config
from backends.support.extras import extra_needed

__all__ = ["DockerConfig", "create_backend", "parse_config"]


def create_backend(config: DockerConfig, ctx: BackendContext) -> Backend:
    with extra_needed("the docker backend"):  # names the extra if the SDK is missing
        from backends.docker.backend import DockerBackend

    return DockerBackend(config, ctx)
