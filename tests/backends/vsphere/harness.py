"""Driving the vcsim harness (tests/backends/vsphere/vcsim) from Python: build it, run one on a free
port with its own TLS cert. Talking to it and making container-backed VMs lives in
loadtest/vcsim (the vsphere bench uses it on the CI simulator; a shipped package
cannot import tests). Used by the vsphere tests' fixtures. No pytest here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from forkproxy.loadtest.vcsim import (  # noqa: F401 - re-exported for the fixtures and tests
    IMAGE,
    NETWORK,
    Simulator,
    Unavailable,
    ensure_network,
    find_vm,
    make_parent,
    make_vm,
    remove_vm,
    vms,
    wait_task,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
HARNESS = ROOT / "tests/backends/vsphere/vcsim"
BINARY = HARNESS / "vcsim"


@dataclass
class Vcsim(Simulator):
    """One harness this process started: the Simulator client plus its log and process."""

    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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


def docker_names(prefix: str = "vcsim-") -> set[str]:
    out = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"name={prefix}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())
