"""Helpers for the process backend tests (fixtures live in conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forkproxy.backends.base import Backend
from forkproxy.backends.process import parse_config
from forkproxy.backends.process._procfs import is_running
from forkproxy.backends.process.config import ProcessConfig
from forkproxy.backends.support.table import Table

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable

MakeBackend = Callable[..., Backend]


def process_config(**keys: Any) -> ProcessConfig:
    table = Table({"type": "process", "cwd": str(REPO), **keys}, "backend")
    config = parse_config(table)
    assert not table.problems, table.problems
    return config


def exec_command(*extra: str) -> list[str]:
    return [PY, "-m", "examples.app", "--port", "{port}", *extra]


def alive_pids(pids: list[int]) -> list[int]:
    return [p for p in pids if is_running(p)]
