"""Fixtures for the process backend tests: real template processes and real commands,
each test in its own pool name so parallel runs on one machine never see each other."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from backends.base import Backend, BackendContext
from backends.config import Table
from backends.process import create_backend, parse_config
from backends.process._linux import is_running
from tests.backend_contract import recording_context

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

MakeBackend = Callable[..., Backend]


def process_config(**keys: Any) -> Any:
    table = Table({"type": "process", "cwd": str(REPO), **keys}, "backend")
    config = parse_config(table)
    assert not table.problems, table.problems
    return config


def exec_command(*extra: str) -> list[str]:
    return [PY, "-m", "examples.app", "--port", "{port}", *extra]


@pytest.fixture
def ctx() -> BackendContext:
    return recording_context(f"test-proc-{uuid.uuid4().hex[:8]}", start_timeout=20.0)


@pytest.fixture
async def make_backend(ctx: BackendContext) -> AsyncIterator[MakeBackend]:
    """make_backend(**backend_keys) -> an unprepared backend, closed after the test."""
    made: list[Backend] = []

    def make(context: BackendContext | None = None, **keys: Any) -> Backend:
        backend = create_backend(process_config(**keys), context or ctx)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


def alive_pids(pids: list[int]) -> list[int]:
    return [p for p in pids if is_running(p)]
