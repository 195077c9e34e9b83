"""requests' own test suite (tests/test_requests.py of its sdist) against httpbin served
directly by pytest-httpbin, then against httpbin behind forkproxy in fork mode
(app_kind = "wsgi", httpbin_through_forkproxy.py): the same tests must fail both ways
(those reaching outside this machine), none only through the proxy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.backends.process.helpers import REPO

pytestmark = pytest.mark.slow

REQUESTS = "2.32.3"
TOOLS = ["pytest>=8,<9", "pytest-httpbin==2.0.0", "httpbin~=0.10.0", "trustme"]
# forkproxy runs from this checkout (PYTHONPATH); its dependencies come from pyproject
DEPS = ["aiohttp", "uvloop", "prometheus-client", "httptools", "waitress"]


def _ok(*cmd: str | Path, cwd: Path) -> None:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("requests")
    _ok(sys.executable, "-m", "venv", tmp / "venv", cwd=tmp)
    pip = tmp / "venv/bin/pip"
    get = ["download", "-q", "--no-deps", "--no-binary", ":all:", f"requests=={REQUESTS}"]
    _ok(pip, *get, "-d", tmp, cwd=tmp)
    with tarfile.open(tmp / f"requests-{REQUESTS}.tar.gz") as sdist:
        sdist.extractall(tmp, filter="data")
    src = tmp / f"requests-{REQUESTS}"
    _ok(pip, "install", "-q", f"{src}[socks]", *TOOLS, *DEPS, cwd=tmp)
    return tmp / "venv/bin/python", src


def _failures(python: Path, src: Path, *plugin: str) -> set[str]:
    # requests has its own `tests` package: the plugin is imported by its bare name
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}"}
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "-W", "ignore",
         *plugin, "tests/test_requests.py"],
        cwd=src, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = done.stdout.splitlines()[-1] if done.stdout else done.stderr[-2000:]
    assert re.search(r"\d+ passed", summary), summary
    return set(re.findall(r"^FAILED (\S+)", done.stdout, re.MULTILINE))


def test_requests_suite_fails_nothing_more_through_forkproxy(suite: tuple[Path, Path]) -> None:
    python, src = suite
    direct = _failures(python, src)
    proxied = _failures(python, src, "-p", "no:httpbin", "-p", "httpbin_through_forkproxy")
    assert proxied - direct == set()
    assert len(direct) < 10, direct  # only what needs the outside network
