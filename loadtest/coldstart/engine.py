"""The Docker engine the docker and swarm benches run against, and the image they start."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker

IMAGE = "forkproxy-test/httpd:latest"
ENGINE = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def connect(swarm: bool = False) -> tuple[docker.DockerClient | None, str]:
    """A client of the engine, which has the test image (`swarm`: and is a Swarm manager);
    else None and why not."""
    import docker  # the docker extra: imported only when a bench runs

    setup = "bash .ci/swarm.sh" if swarm else "bash .ci/docker.sh"
    try:
        client = docker.DockerClient(base_url=ENGINE, timeout=30)
    except Exception as exc:  # the client asks the engine its API version at once
        return None, f"no Docker engine at {ENGINE}: {exc} (run: {setup})"
    try:
        info = client.info()
        client.images.get(IMAGE)
    except Exception as exc:
        client.close()
        return None, f"no Docker engine or image {IMAGE} at {ENGINE}: {exc} (run: {setup})"
    if swarm and not (info.get("Swarm") or {}).get("ControlAvailable"):
        client.close()
        return None, f"the engine at {ENGINE} is not a Swarm manager (run: {setup})"
    return client, ""
