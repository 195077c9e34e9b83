"""Fixtures for the process backend tests: real template processes and real commands,
each test in its own pool name so parallel runs on one machine never see each other."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from forkproxy.backends.base import Backend, BackendContext
from forkproxy.backends.process import create_backend
from tests.backends.contract import recording_context
from tests.backends.process.helpers import MakeBackend, process_config


@pytest.fixture
def ctx() -> BackendContext:
    return recording_context(f"test-proc-{uuid.uuid4().hex[:8]}", start_timeout=20.0)


@pytest.fixture
async def make_backend(ctx: BackendContext) -> AsyncIterator[MakeBackend]:
    """make_backend(context=None, **backend_keys) -> an unprepared backend, closed after."""
    made: list[Backend] = []

    def make(context: BackendContext | None = None, **keys: Any) -> Backend:
        backend = create_backend(process_config(**keys), context or ctx)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()
