"""`forkproxy check-config` for the docker backend: the image is on every engine that
answers within engine_timeout (an engine that does not is only mentioned: it may be up
by the time the proxy runs, and the proxy skips it until then)."""

from __future__ import annotations

import logging

import docker.errors

from forkproxy.backends.docker.config import DockerConfig
from forkproxy.backends.engine.client import Engine
from forkproxy.backends.errors import BackendUnavailable
from forkproxy.backends.support.table import Problem

log = logging.getLogger("forkproxy.backend.docker")


def check_config(config: DockerConfig, *, imports: bool = True) -> list[Problem]:
    problems = []
    for url in config.engines:
        engine = Engine(url, config.engine_retry, config.engine_timeout)
        try:
            engine.connect()
            engine.client.api.inspect_image(config.image)
        except BackendUnavailable as exc:
            log.warning("image not checked: %s", exc)
        except docker.errors.ImageNotFound:
            if config.pull == "never":
                problems.append(
                    Problem(
                        "backend.image",
                        f'{config.image!r} not found on Docker engine {url} (pull = "never")',
                    )
                )
        except docker.errors.APIError as exc:
            problems.append(Problem("backend.image", f"{config.image!r} on {url}: {exc}"))
        finally:
            engine.close()
    return problems
