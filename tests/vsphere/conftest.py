"""Fixtures for the vsphere backend against the real vcsim harness (tests/vsphere/vcsim):
each test session runs its own simulator on a free port with its own TLS cert, and a
container-backed parent VM. Without the harness: skip, or fail with FORKPROXY_REQUIRE_VSPHERE=1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.base import BackendContext
from backends.config import ConfigError, Table
from backends.vsphere import VsphereBackend, create_backend, parse_config
from tests.backend_contract import recording_context
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests/vsphere/vcsim"
BINARY = HARNESS / "vcsim"
IMAGE = "forkproxy-test/httpd:latest"
PASSWORD_ENV = "FORKPROXY_TEST_VCSIM_PASSWORD"


def _unavailable(msg: str) -> None:
    msg = f"vcsim not available: {msg} (run: sudo bash .ci/vcsim.sh)"
    if os.environ.get("FORKPROXY_REQUIRE_VSPHERE") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@dataclass
class Vcsim:
    """One running harness: where it listens and how to log in."""

    host: str
    port: int
    user: str
    password: str
    ca_file: str
    log: Path

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def connect(self, user: str | None = None, password: str | None = None) -> Any:
        from pyVim.connect import SmartConnect

        return SmartConnect(
            host=self.host,
            port=self.port,
            user=user or self.user,
            pwd=password or self.password,
            sslContext=self.ssl(),
        )

    def calls(self, reset: bool = False) -> dict[str, int]:
        """SOAP calls per method since the last reset (the harness counts them)."""
        req = urllib.request.Request(
            f"{self.url}/forkproxy/calls", method="POST" if reset else "GET"
        )
        with urllib.request.urlopen(req, context=self.ssl(), timeout=10) as resp:
            return dict(json.load(resp))


def _build_harness() -> None:
    if BINARY.exists() and BINARY.stat().st_mtime >= max(
        p.stat().st_mtime for p in HARNESS.glob("*.go")
    ):
        return
    if not shutil.which("go") or not Path("/usr/share/gocode/src/github.com/vmware").exists():
        _unavailable(f"{BINARY} is not built and go/govmomi sources are missing")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="")
    env.setdefault("GOCACHE", "/tmp/forkproxy-gocache")
    res = subprocess.run(
        ["go", "build", "-o", str(BINARY), "./tests/vsphere/vcsim"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        pytest.fail(f"building the vcsim harness failed:\n{res.stderr}", pytrace=False)


def _docker_ready() -> None:
    try:
        subprocess.run(["docker", "image", "inspect", IMAGE], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        _unavailable(f"no Docker engine with {IMAGE} ({exc}); .ci/docker.sh builds it")


@pytest.fixture(scope="session")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vcsim]:
    _docker_ready()
    _build_harness()
    state = tmp_path_factory.mktemp("vcsim")
    cert, key = state / "cert.pem", state / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    password = uuid.uuid4().hex
    env_file, log = state / "vcsim.env", state / "vcsim.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *(str(BINARY), "-listen", f"127.0.0.1:{port}", "-tls-cert", str(cert)),
                *("-tls-key", str(key), "-password", password, "-env-file", str(env_file)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vcsim did not start:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.05)
        yield Vcsim("127.0.0.1", port, "forkproxy", password, str(cert), log)
    finally:
        proc.send_signal(signal.SIGTERM)  # it removes its VMs' containers on the way out
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_task(task: Any, timeout: float = 60) -> Any:
    from pyVim.task import WaitForTask

    WaitForTask(task, maxWaitTime=timeout)
    return task.info.result


@pytest.fixture(scope="session")
def si(vcsim: Vcsim) -> Iterator[Any]:
    """The tests' own admin connection (separate from any backend's session)."""
    from pyVim.connect import Disconnect

    conn = vcsim.connect()
    yield conn
    Disconnect(conn)


def find_vm(si: Any, name: str) -> Any:
    from pyVmomi import vim

    root = si.content.rootFolder
    view = si.content.viewManager.CreateContainerView(root, [vim.VirtualMachine], True)
    try:
        return next((vm for vm in view.view if vm.name == name), None)
    finally:
        view.DestroyView()


def make_vm(si: Any, name: str, run_container: list[str] | None, power_on: bool = True) -> Any:
    """A fresh VM (cloned from the model's DC0_H0_VM0) whose extraConfig RUN.container makes
    the simulator back it with a real container from the test image."""
    from pyVmomi import vim

    base = si.content.searchIndex.FindByInventoryPath("DC0/vm/DC0_H0_VM0")
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False, template=False)
    if run_container is not None:
        opt = vim.option.OptionValue(key="RUN.container", value=json.dumps(run_container))
        spec.config = vim.vm.ConfigSpec(extraConfig=[opt])
    vm = wait_task(base.CloneVM_Task(folder=base.parent, name=name, spec=spec))
    if power_on:
        wait_task(vm.PowerOnVM_Task())
    return vm


@pytest.fixture(scope="session")
def parent(si: Any) -> Iterator[str]:
    """A running container-backed parent VM with a snapshot "base" (for linked mode)."""
    name = f"fp-parent-{uuid.uuid4().hex[:6]}"
    vm = make_vm(si, name, [IMAGE])
    wait_task(vm.CreateSnapshot_Task(name="base", memory=False, quiesce=False))
    yield name
    wait_task(vm.PowerOffVM_Task())
    wait_task(vm.Destroy_Task())


def docker_names(prefix: str = "vcsim-") -> set[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"name={prefix}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


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
