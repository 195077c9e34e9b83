"""The `docker` backend: a labelled container per instance, plus a pool of paused
containers that unpause in milliseconds. The docker SDK is imported only when used."""

from __future__ import annotations

import logging

from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.docker.config import DockerConfig, parse_config
from forkproxy.backends.support.extras import MissingExtra, extra_needed
from forkproxy.backends.support.table import Problem

__all__ = ["DockerConfig", "check_config", "create_backend", "parse_config"]


def create_backend(config: DockerConfig, ctx: BackendContext) -> Backend:
    with extra_needed("the docker backend"):  # names the extra if the SDK is missing
        from forkproxy.backends.docker.backend import DockerBackend

    return DockerBackend(config, ctx)


def check_config(config: DockerConfig, *, imports: bool = True) -> list[Problem]:
    try:
        with extra_needed("checking the image on the engines"):
            from forkproxy.backends.docker.check import check_config as check
    except MissingExtra as exc:  # the config itself is valid; `run` names the extra
        logging.getLogger("forkproxy.backend.docker").warning("image not checked: %s", exc)
        return []
    return check(config, imports=imports)
