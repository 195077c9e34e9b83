"""The process backend's logger (its tasks use the shared backends.support.tasks.TaskSet)."""

from __future__ import annotations

import logging

log = logging.getLogger("forkproxy.backends.process")
