"""forkfloor forks through the template's public build/fork_instance (no private modules):
an aiohttp and a WSGI app both serve from its forks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.backends.process.helpers import REPO


@pytest.mark.parametrize(
    "app", ["examples.app:create_app", "tests.backends.process.wsgi_apps:flask_app"]
)
def test_forkfloor_serves_from_forks_built_like_a_template(app: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "forkproxy.loadtest.coldstart.forkfloor", app, "10"],
        cwd=REPO,
        capture_output=True,
        timeout=90,
        check=True,
    )
    result = json.loads(out.stdout)
    assert "served_error" not in result, result
    assert result["served_n"] == 10 and result["fork_to_first_byte_p50_ms"] > 0
