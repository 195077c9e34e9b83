"""A locustfile to copy: a browsing user mixing cheap, I/O-bound and CPU-bound requests.

  locust -f loadtest/load/locustfile.py --headless --host http://127.0.0.1:8080 --csv out/x \
      -t 30s -u 20
  FORKPROXY_SHAPE=spike locust -f loadtest/load/locustfile.py --headless --host ... --csv out/x

FORKPROXY_SHAPE = none | step | spike | sine picks a load shape (parameters:
loadtest/load/profiles.py);
FORKPROXY_WAIT_MIN / FORKPROXY_WAIT_MAX set the think time in seconds (default 0.5 / 1.5);
FORKPROXY_IO_MS / FORKPROXY_CPU_MS set the work per /io and /cpu request (default 50 / 5).
Copy it anywhere: it needs only `forkproxy.loadtest.load.shapes`, installed with forkproxy (or a
checkout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from locust import HttpUser, between, task

try:
    from forkproxy.loadtest.load import shapes
except ImportError:  # run from a checkout without `pip install`: the repo root holds loadtest/
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from forkproxy.loadtest.load import shapes

_IO_MS = int(os.environ.get("FORKPROXY_IO_MS", "50"))
_CPU_MS = int(os.environ.get("FORKPROXY_CPU_MS", "5"))


class AppUser(HttpUser):
    wait_time = between(
        float(os.environ.get("FORKPROXY_WAIT_MIN", "0.5")),
        float(os.environ.get("FORKPROXY_WAIT_MAX", "1.5")),
    )

    @task(3)
    def index(self) -> None:
        self.client.get("/", name="/")

    @task(2)
    def io(self) -> None:
        self.client.get(f"/io?ms={_IO_MS}", name="/io")

    @task(1)
    def cpu(self) -> None:
        self.client.get(f"/cpu?ms={_CPU_MS}", name="/cpu")


# Locust runs the first LoadTestShape it finds in this module, so expose only the chosen one.
Shape = shapes.select(os.environ.get("FORKPROXY_SHAPE"))
if Shape is None:
    del Shape
