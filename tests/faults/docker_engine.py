"""A Docker engine of the fault tests' own, to kill and restart: a second dockerd with its
own data root, exec root, socket, pid file, containerd namespace and bridge (as
.ci/swarm.sh starts its worker), never the machine's main engine. Its bridge is made here
with `ip link add`; never `--bridge=none`, which deletes the host's docker0.

    python -m tests.faults.docker_engine up     start it (and load the test image)
    python -m tests.faults.docker_engine down   stop it, delete its bridge

Needs root, `dockerd` and `ip`; `problem()` says what is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIR = Path(os.environ.get("FORKPROXY_FAULT_DOCKER_DIR", "/tmp/forkproxy-fault-docker"))
SOCKET = "/run/forkproxy-fault-docker.sock"
URL = f"unix://{SOCKET}"
BRIDGE = "fpfault0"
BRIDGE_ADDR = "172.31.251.1/24"  # beside .ci/swarm.sh's 172.31.250.0/24
IMAGE = "forkproxy-test/httpd:latest"


def problem() -> str | None:
    """Why this machine cannot run the engine, or None."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (apt-get install docker.io, or run .ci/docker.sh)"
    if shutil.which("ip") is None:
        return "the ip command is missing (iproute2): the engine's bridge cannot be made"
    if os.geteuid() != 0:
        return "a second dockerd needs root"
    return None


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout)


def _alive(pid: int, comm: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == comm
    except OSError:
        return False


def _pid(path: Path, comm: str) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid, comm) else None


class FaultEngine:
    def __init__(self, root: Path = DIR) -> None:
        self.root = root
        self.url = URL
        self.log = root / "dockerd.log"
        self._pidfile = root / "dockerd.pid"
        self._containerd_pidfile = root / "exec" / "containerd" / "containerd.pid"
        self._proc: subprocess.Popen[bytes] | None = None  # the dockerd we started

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            self._proc = None

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run("docker", "-H", self.url, *args, check=False, timeout=timeout)

    def answers(self) -> bool:
        return self.docker("version", "--format", "{{.Server.Version}}", timeout=10).returncode == 0

    def _bridge(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
            _run("ip", "addr", "add", BRIDGE_ADDR, "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def start(self, within: float = 60.0) -> float:
        """Start dockerd; return the seconds until it answered."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._bridge()
        if _pid(self._pidfile, "dockerd") is None:
            self._pidfile.unlink(missing_ok=True)  # a killed dockerd's: it would refuse
            with self.log.open("ab") as out:
                self._proc = subprocess.Popen(
                    [
                        "dockerd",
                        "--data-root",
                        str(self.root / "data"),
                        "--exec-root",
                        str(self.root / "exec"),
                        "-H",
                        self.url,
                        "--pidfile",
                        str(self._pidfile),
                        f"--bridge={BRIDGE}",
                        "--iptables=false",
                        "--ip-masq=false",
                        "--containerd-namespace",
                        "fpfault",
                        "--containerd-plugins-namespace",
                        "fpfault-plugins",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
        while not self.answers():
            if time.monotonic() - t0 > within:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the fault dockerd did not answer in {within}s:\n{tail}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def load_image(self) -> None:
        env = {**os.environ, "DOCKER_HOST": self.url}
        res = subprocess.run(
            ["bash", str(ROOT / "tests/images/build.sh")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"tests/images/build.sh failed:\n{res.stdout}{res.stderr}")

    def kill(self) -> None:
        """SIGKILL dockerd and its containerd: the engine dies, as in a crash. The
        containers' shims outlive it (as they do in a real crash) until it restarts."""
        for path, comm in ((self._pidfile, "dockerd"), (self._containerd_pidfile, "containerd")):
            pid = _pid(path, comm)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for path, comm in ((self._pidfile, "dockerd"), (self._containerd_pidfile, "containerd")):
            deadline = time.monotonic() + 10
            while _pid(path, comm) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
        self._reap()

    def labelled(self, label: str) -> list[str]:
        """Names of the containers (any state) carrying `label` (key=value)."""
        res = self.docker("ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}")
        if res.returncode != 0:
            raise RuntimeError(f"docker ps on {self.url}: {res.stderr}")
        return res.stdout.split()

    def stop(self) -> None:
        """Stop dockerd (SIGTERM: it stops its containers), then delete the bridge. A
        killed engine is started first: its containers outlive it in their shims, and a
        dockerd reaps them as it starts."""
        if _pid(self._pidfile, "dockerd") is None and (self.root / "data").exists():
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                self.start()
        pid = _pid(self._pidfile, "dockerd")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid, "dockerd") and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid, "dockerd"):
                os.kill(pid, signal.SIGKILL)
        self._reap()
        _run("ip", "link", "del", BRIDGE, check=False)


def main(argv: list[str]) -> int:
    engine = FaultEngine()
    if argv[:1] == ["down"]:
        engine.stop()
        return 0
    if (why := problem()) is not None:
        print(f"docker_engine: {why}", file=sys.stderr)
        return 1
    secs = engine.start()
    engine.load_image()
    print(f"docker_engine: {engine.url} up in {secs:.1f}s (log {engine.log})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
