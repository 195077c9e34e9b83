"""What the vsphere backend does inside a clone once it has an IP: start the app container
through the clone's Docker API (backend.container) and its own readiness probe
(backend.readiness_path). Both record their phase time on the Instance."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from forkproxy.backends.base import Instance
from forkproxy.backends.errors import StartError
from forkproxy.backends.support.probe import NotReady, wait_ready
from forkproxy.backends.vsphere.config import ContainerSpec


async def start_container(
    instance: Instance, spec: ContainerSpec, name: str, labels: dict[str, str]
) -> None:
    """docker run on the clone's engine (engine_url with {ip}); host networking, so the app
    listens on the clone's own address. The container dies with the VM: no stop needed."""
    url = spec.engine_url.format(ip=instance.endpoint.host)
    t0 = time.monotonic()

    def run() -> str:
        import docker

        client = docker.DockerClient(base_url=url, timeout=60)
        try:
            container = client.containers.run(
                spec.image,
                list(spec.command) if spec.command else None,
                detach=True,
                name=name,
                labels=labels,
                network_mode="host",
                restart_policy={"Name": "unless-stopped"},
            )
            return str(container.id)
        finally:
            client.close()

    try:
        cid = await asyncio.to_thread(run)
    except Exception as exc:
        raise StartError(
            f"clone {name}: app container on {url} failed: {exc}", reason="container_failed"
        ) from exc
    instance.meta["container"] = cid[:12]
    instance.phases["container"] = time.monotonic() - t0


async def probe(instance: Instance, path: str, within: float) -> None:
    """The readiness probe (forkproxy.backends.support.probe) on path, then mark the instance ready
    for the pool."""
    t0 = time.monotonic()
    url = instance.endpoint.url + path
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        try:
            # A guest app coming up: nothing to subscribe to, so poll every 50 ms.
            await wait_ready(http, url, deadline=t0 + within, first_delay=0.05, max_delay=0.05)
        except NotReady as exc:
            raise StartError(
                f"{url} did not answer within {within:g}s ({exc.last})", reason="not_ready"
            ) from exc
    instance.ready = True
    instance.phases["readiness"] = time.monotonic() - t0
