"""Driving the vcsim harness (tests/backends/vsphere/vcsim) from Python: build it, run one on a free
port with its own TLS cert, talk to it, make container-backed VMs. Used by the vsphere tests'
fixtures and by loadtest/bench_vsphere.py. No pytest here."""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
HARNESS = ROOT / "tests/backends/vsphere/vcsim"
BINARY = HARNESS / "vcsim"
IMAGE = "forkproxy-test/httpd:latest"
# The VMs' containers get their own bridge: on the default one, other suites' containers
# would pick up a destroyed clone's IP at once and "still serve" where it was.
NETWORK = "forkproxy-vcsim"


class Unavailable(Exception):
    """The harness cannot run here (no binary and no toolchain, no Docker engine or image)."""


@dataclass
class Vcsim:
    """One running harness: where it listens and how to log in."""

    host: str
    port: int
    user: str
    password: str
    ca_file: str
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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

    def _knob(self, path: str, post: bool) -> Any:
        req = urllib.request.Request(self.url + path, method="POST" if post else "GET")
        with urllib.request.urlopen(req, context=self.ssl(), timeout=10) as resp:
            return json.load(resp)

    def calls(self, reset: bool = False) -> dict[str, int]:
        """SOAP calls per method since the last reset (the harness counts them)."""
        return dict(self._knob("/forkproxy/calls", reset))

    def set_guest_ip_delay(self, ms: int) -> None:
        """Clones report their guest IP `ms` after their clone task completes."""
        self._knob(f"/forkproxy/guest-ip-delay?ms={ms}", True)

    def stop(self) -> None:
        """SIGTERM: the harness removes its VMs' containers on the way out."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def check_docker() -> None:
    try:
        subprocess.run(["docker", "image", "inspect", IMAGE], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        msg = f"no Docker engine with {IMAGE} (.ci/docker.sh builds it): {exc}"
        raise Unavailable(msg) from exc


def ensure_network() -> None:
    probe = subprocess.run(["docker", "network", "inspect", NETWORK], capture_output=True)
    if probe.returncode == 0:
        return
    made = subprocess.run(["docker", "network", "create", NETWORK], capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in made.stderr:
        raise RuntimeError(f"docker network create {NETWORK}: {made.stderr.strip()}")


def build() -> None:
    """Build the binary unless it is newer than its sources."""
    sources = list(HARNESS.glob("*.go"))
    if BINARY.exists() and BINARY.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return
    if not shutil.which("go") or not Path("/usr/share/gocode/src/github.com/vmware").exists():
        raise Unavailable(f"{BINARY} is not built and go/govmomi sources are missing")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode", GOFLAGS="")
    env.setdefault("GOCACHE", "/tmp/forkproxy-gocache")
    res = subprocess.run(
        ["go", "build", "-o", str(BINARY), "./tests/backends/vsphere/vcsim"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        raise RuntimeError(f"building the vcsim harness failed:\n{res.stderr}")


def start(state: Path) -> Vcsim:
    """Run a harness on a free loopback port with a fresh self-signed cert under `state`."""
    check_docker()
    ensure_network()
    build()
    state.mkdir(parents=True, exist_ok=True)
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
    env_file.unlink(missing_ok=True)
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
    deadline = time.monotonic() + 30
    while not env_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"vcsim did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return Vcsim("127.0.0.1", port, "forkproxy", password, str(cert), log, proc)


def wait_task(task: Any, timeout: float = 60) -> Any:
    from pyVim.task import WaitForTask

    WaitForTask(task, maxWaitTime=timeout)
    return task.info.result


def vms(si: Any) -> list[Any]:
    from pyVmomi import vim

    root = si.content.rootFolder
    view = si.content.viewManager.CreateContainerView(root, [vim.VirtualMachine], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


def find_vm(si: Any, name: str) -> Any:
    return next((vm for vm in vms(si) if vm.name == name), None)


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


def make_parent(si: Any) -> str:
    """A running container-backed parent VM with a snapshot "base" (for linked mode)."""
    name = f"fp-parent-{uuid.uuid4().hex[:6]}"
    vm = make_vm(si, name, ["--network", NETWORK, IMAGE])
    wait_task(vm.CreateSnapshot_Task(name="base", memory=False, quiesce=False))
    return name


def remove_vm(si: Any, name: str) -> None:
    vm = find_vm(si, name)
    if vm is None:
        return
    if vm.runtime.powerState != "poweredOff":
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
