"""The vSphere simulator the vsphere bench runs against: the vcsim harness of the vsphere tests
(govmomi's simulator plus InstantClone_Task and two knobs), already running.

It is found from the env file the harness writes once it listens (`sudo bash .ci/vcsim.sh`
writes /tmp/forkproxy-vcsim.env; FORKPROXY_VCSIM_ENV names another one) or from FORKPROXY_VCSIM_*
variables, which win over the file. The shipped loadtest cannot import the tests' harness, so
the tests' harness imports the client and VM helpers from here; this package itself is left
out of the wheel (pyproject.toml): it is for a checkout, where the simulator is.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_FILE = "/tmp/forkproxy-vcsim.env"
PREFIX = "FORKPROXY_VCSIM_"
IMAGE = "forkproxy-test/httpd:latest"
# The VMs' containers get their own bridge: on the default one, other suites' containers
# would pick up a destroyed clone's IP at once and "still serve" where it was.
NETWORK = "forkproxy-vcsim"


class Unavailable(Exception):
    """No simulator to use here: none named by the env file or variables, or it does not
    answer (for the tests' harness: it cannot be built or has no Docker engine)."""


@dataclass
class Simulator:
    """Where a running harness listens and how to log in."""

    host: str
    port: int
    user: str
    password: str
    ca_file: str

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

    def disconnect(self, si: Any) -> None:
        from pyVim.connect import Disconnect

        Disconnect(si)

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


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; {} when the file is missing."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def find(environ: Mapping[str, str] = os.environ) -> Simulator:
    """The running simulator named by the env file and FORKPROXY_VCSIM_* variables; checks
    that it answers. Raises Unavailable with the reason otherwise."""
    env_file = Path(environ.get(f"{PREFIX}ENV", ENV_FILE))
    facts = {**read_env_file(env_file), **{k: v for k, v in environ.items() if k in _KEYS}}
    missing = [k for k in _KEYS if not facts.get(k)]
    if missing:
        raise Unavailable(
            f"no simulator: {', '.join(missing)} not in {env_file} or the environment "
            "(start one: sudo bash .ci/vcsim.sh)"
        )
    try:
        port = int(facts[f"{PREFIX}PORT"])
    except ValueError as exc:
        raise Unavailable(f"{PREFIX}PORT={facts[f'{PREFIX}PORT']!r} is not a port") from exc
    sim = Simulator(
        host=facts[f"{PREFIX}HOST"],
        port=port,
        user=facts[f"{PREFIX}USER"],
        password=facts[f"{PREFIX}PASSWORD"],
        ca_file=facts[f"{PREFIX}CA_FILE"],
    )
    try:
        sim.calls()
    except (OSError, urllib.error.URLError, ValueError) as exc:
        msg = f"the simulator named by {env_file} does not answer at {sim.url}: {exc}"
        raise Unavailable(msg) from exc
    return sim


_KEYS = tuple(f"{PREFIX}{k}" for k in ("HOST", "PORT", "USER", "PASSWORD", "CA_FILE"))


def ensure_network() -> None:
    """The Docker bridge the VMs' containers join (see NETWORK)."""
    probe = subprocess.run(["docker", "network", "inspect", NETWORK], capture_output=True)
    if probe.returncode == 0:
        return
    made = subprocess.run(["docker", "network", "create", NETWORK], capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in made.stderr:
        raise RuntimeError(f"docker network create {NETWORK}: {made.stderr.strip()}")


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
