"""Cold start to first byte through forkproxy for WSGI vs async apps: the Flask example
in fork mode (waitress), the aiohttp demo in fork mode, and the same Flask app in exec
mode under gunicorn (-w 1); and a `django-admin startproject` site's GET /admin/login/
in fork mode without and with backend.warmup_requests (its URL resolver, templates and
middleware built lazily on a fork's first request, or in the template before it forks).
Every request gets a fresh instance (max_requests_per_instance = 1), so each sample is a
whole cold start seen by a client.

    .venv/bin/python -m forkproxy.loadtest.coldstart.wsgi --n 30

Prints a JSON table (p50/p90 ms per setup). Self-contained: runs `python -m forkproxy` on a
free port with a config written to a temporary directory; needs flask and gunicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FLASK = "examples.flask_app:app"
# "_path": what each sample GETs (default "/"); "_django": the backend runs in a fresh
# startproject site (made once per run), its cwd and settings filled in then.
DJANGO = {
    "mode": "fork",
    "app": "mysite.wsgi:application",
    "prefork": 1,
    "_django": True,
    "_path": "/admin/login/",
}
SETUPS: dict[str, dict[str, Any]] = {
    "aiohttp fork": {"mode": "fork", "app": "examples.app:create_app", "prefork": 0},
    "aiohttp fork, prefork=1": {"mode": "fork", "app": "examples.app:create_app", "prefork": 1},
    "flask fork (waitress)": {"mode": "fork", "app": FLASK, "prefork": 0},
    "flask fork (waitress), prefork=1": {"mode": "fork", "app": FLASK, "prefork": 1},
    "django fork (waitress), prefork=1: GET /admin/login/": {
        **DJANGO,
        "warmup_requests": [],
    },
    "django fork (waitress), prefork=1, warmup_requests: GET /admin/login/": {
        **DJANGO,
        "warmup_requests": ["/admin/login/"],
    },
    "flask exec (gunicorn -w 1)": {
        "mode": "exec",
        "command": [
            sys.executable,
            "-m",
            "gunicorn",
            FLASK,
            "-w",
            "1",
            "-b",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _django_site(root: Path) -> Path:
    """A `django-admin startproject` site, migrated (SQLite): what a user starts from."""
    site = root / "site"
    if not site.exists():
        site.mkdir(parents=True)
        django = [sys.executable, "-m", "django"]
        subprocess.run([*django, "startproject", "mysite", str(site)], check=True, timeout=60)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
        manage = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
        subprocess.run(manage, cwd=site, env=env, check=True, timeout=120)
    return site


def _config(port: int, backend: dict[str, Any]) -> str:
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        'admin = "off"',
        f'name = "bench-wsgi-{os.getpid()}"',
        "[pool]",
        "max_requests_per_instance = 1",
        'readiness_path = "/healthz"',
        'start_timeout = "20s"',
        "[backend]",
        'type = "process"',
        *([] if "cwd" in backend else [f'cwd = "{REPO}"']),
        *(f"{k} = {_toml(v)}" for k, v in backend.items()),
    ]
    return "\n".join(lines) + "\n"


def _first_byte(port: int, path: str = "/") -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        first = sock.recv(1)
        elapsed = time.perf_counter() - t0
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    response = first + rest
    if not response.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"bad response: {response[:200]!r}")
    return elapsed


def measure(setup: dict[str, Any], n: int, gap: float, work: Path) -> list[float]:
    backend = {k: v for k, v in setup.items() if not k.startswith("_")}
    path = str(setup.get("_path", "/"))
    if setup.get("_django"):
        backend["cwd"] = str(_django_site(work))
        backend["env"] = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(_config(port, backend))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "forkproxy",
                "run",
                "--config",
                str(cfg),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _first_byte(port, path)  # also the first (template) start: not counted
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            samples = []
            for _ in range(n):
                time.sleep(gap)  # the used-up instance is stopped, spares refill
                samples.append(_first_byte(port, path))
            return samples
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--gap", type=float, default=0.2)
    ap.add_argument("--only", default="", help="run only setups whose name contains this")
    args = ap.parse_args(argv)
    table = {}
    with tempfile.TemporaryDirectory(prefix="bench-wsgi-") as work:
        for name, setup in SETUPS.items():
            if args.only in name:
                table[name] = _row(sorted(measure(setup, args.n, args.gap, Path(work))))
                print(name, table[name], file=sys.stderr)
    print(json.dumps(table, indent=2))
    return 0


def _row(samples: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 1),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))] * 1000, 1),
        "n": len(samples),
    }


if __name__ == "__main__":
    sys.exit(main())
