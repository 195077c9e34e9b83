"""A locustfile for `forkproxy tune --paths /a,/b`: each user GETs the listed paths (of
the user's app) in random order, with the think time of loadtest/load/locustfile.py.

FORKPROXY_PATHS: comma-separated paths (queries allowed: "/search?q=x");
FORKPROXY_WAIT_MIN / FORKPROXY_WAIT_MAX: think time in seconds (0.5 / 1.5)."""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

PATHS = [p.strip() for p in os.environ.get("FORKPROXY_PATHS", "/").split(",") if p.strip()]


class PathsUser(HttpUser):
    wait_time = between(
        float(os.environ.get("FORKPROXY_WAIT_MIN", "0.5")),
        float(os.environ.get("FORKPROXY_WAIT_MAX", "1.5")),
    )

    @task
    def get(self) -> None:
        path = random.choice(PATHS)
        self.client.get(path, name=path.partition("?")[0])
