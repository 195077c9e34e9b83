"""Fixtures for the load-test suite: a real example app process on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forkproxy.loadtest.run.procs import PYTHON, free_port, running


@pytest.fixture
async def app_url(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [PYTHON, "-m", "examples.app", "--port", str(port)]
    async with running("app", argv, tmp_path / "logs", ready_url=f"{url}/healthz"):
        yield url
