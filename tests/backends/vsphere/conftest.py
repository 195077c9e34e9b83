"""Fixtures for the vsphere backend against the real vcsim harness (tests/backends/vsphere/vcsim):
each test session runs its own simulator on a free port with its own TLS cert, and a
container-backed parent VM. Without the harness: skip, or fail with FORKPROXY_REQUIRE_VSPHERE=1."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from forkproxy.backends.base import BackendContext
from forkproxy.backends.support.table import ConfigError, Table
from forkproxy.backends.vsphere import create_backend, parse_config
from forkproxy.backends.vsphere.backend import VsphereBackend
from tests.backends.contract import recording_context
from tests.backends.vsphere import harness
from tests.backends.vsphere.harness import (  # noqa: F401 - re-exported for the test modules
    Vcsim,
    docker_names,
    find_vm,
    make_vm,
    wait_task,
)

PASSWORD_ENV = "FORKPROXY_TEST_VCSIM_PASSWORD"


def vm_names(si: Any) -> set[str]:
    """The simulator's VM names now. A VM destroyed while the view is read (the proxy
    reaping a clone as a test polls for it) is skipped, not an error."""
    from pyVmomi import vim, vmodl

    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True
    )
    names = set()
    try:
        for vm in view.view:
            try:
                names.add(str(vm.name))
            except vmodl.fault.ManagedObjectNotFound:
                continue  # destroyed while we looked
    finally:
        view.DestroyView()
    return names


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    try:
        sim = harness.start(tmp_path_factory.mktemp("vcsim"))
    except harness.Unavailable as exc:
        msg = f"vcsim not available: {exc} (run: sudo bash .ci/vcsim.sh)"
        if os.environ.get("FORKPROXY_REQUIRE_VSPHERE") == "1":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="session")
def si(vcsim: Vcsim) -> Iterator[Any]:
    """The tests' own admin connection (separate from any backend's session)."""
    from pyVim.connect import Disconnect

    conn = vcsim.connect()
    yield conn
    Disconnect(conn)


@pytest.fixture(scope="session")
def parent(si: Any) -> Iterator[str]:
    """A running container-backed parent VM with a snapshot "base" (for linked mode)."""
    name = harness.make_parent(si)
    yield name
    harness.remove_vm(si, name)


MakeBackend = Callable[..., VsphereBackend]


@pytest.fixture
def pool_name() -> str:
    return f"vs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def ctx(pool_name: str) -> BackendContext:
    return recording_context(pool_name)


def backend_table(vcsim: Vcsim, parent: str, **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "type": "vsphere",
        "host": vcsim.host,
        "port": vcsim.port,
        "user": vcsim.user,
        "password_env": PASSWORD_ENV,
        "ca_file": vcsim.ca_file,
        "parent_vm": parent,
        "guest_ip_timeout": "20s",
        "clone_timeout": "60s",
    }
    table.update(overrides)
    return {k: v for k, v in table.items() if v is not None}


def parse(table: dict[str, Any]) -> Any:
    """parse_config on a [backend] table, as proxy/config.py calls it (key paths and all)."""
    t = Table.root({"backend": table}).sub("backend")
    t.str("type")
    cfg = parse_config(t)
    if t.problems:
        raise ConfigError(t.problems)
    return cfg


@pytest.fixture
async def make_backend(
    vcsim: Vcsim, parent: str, ctx: BackendContext, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MakeBackend]:
    """Build (not prepare) backends on the session's simulator; all are closed at the end."""
    monkeypatch.setenv(PASSWORD_ENV, vcsim.password)
    made: list[VsphereBackend] = []

    def make(context: BackendContext | None = None, **overrides: Any) -> VsphereBackend:
        backend = create_backend(parse(backend_table(vcsim, parent, **overrides)), context or ctx)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()
