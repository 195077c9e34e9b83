"""The `vsphere` backend: an instance is an Instant Clone (or linked clone) of a running
parent VM. pyVmomi is imported only when used."""

from __future__ import annotations

from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.support.extras import extra_needed
from forkproxy.backends.vsphere.config import VsphereConfig, parse_config

__all__ = ["VsphereConfig", "create_backend", "parse_config"]


def create_backend(config: VsphereConfig, ctx: BackendContext) -> Backend:
    with extra_needed("the vsphere backend"):  # names the extra if the SDK is missing
        from forkproxy.backends.vsphere.backend import VsphereBackend

    return VsphereBackend(config, ctx)
