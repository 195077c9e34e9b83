"""`forkproxy tune` on the user's own app: the Flask example driven by its own locustfile,
by a list of paths and by a recorded access log; each point says why requests failed
(a path the app does not serve: "404 xN", a multiplication sign) and the report names
the app's paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkproxy.loadtest.load import accesslog
from forkproxy.loadtest.load.locustrun import reason
from forkproxy.loadtest.tune import Measured, Point, load_base, parse_args, timeline
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
TIMES = "\N{MULTIPLICATION SIGN}"

FLASK_CONFIG = """
[server]
name = "tune-flask-{pid}"
[pool]
max_instances = 6
readiness_path = "/healthz"
[backend]
type = "process"
app = "examples.flask_app:app"
cwd = "{cwd}"
threads = 2
"""

LOCUSTFILE = """
from locust import HttpUser, constant, task


class FlaskUser(HttpUser):
    wait_time = constant(0.05)

    @task(3)
    def index(self):
        self.client.get("/")

    @task(2)
    def delay(self):
        self.client.get("/delay?ms=20", name="/delay")

    @task(1)
    def missing(self):
        self.client.get("/no-such-page")
"""


def tune(tmp_path: Path, *source: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "flask.toml"
    # cwd relative to the config file, as a user writes it (tmp_path is not in the repo)
    cwd = os.path.relpath(ROOT, tmp_path)
    config.write_text(FLASK_CONFIG.format(pid=os.getpid(), cwd=cwd))
    argv = [sys.executable, "-m", "forkproxy.loadtest", "tune", "--config", str(config), *source]
    argv += ["--shape", "spike", "--p99", "5000", "--budget", "14", "--max-concurrency", "2"]
    argv += ["--target-concurrency", "auto", "--idle-ttl", "auto", "--routing", "pack"]
    env = {**os.environ, "FORKPROXY_SPIKE_USERS": "4"}
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=100, env=env)


@pytest.mark.timeout(120)
def test_tune_drives_the_apps_own_locustfile_and_says_why_requests_failed(
    tmp_path: Path,
) -> None:
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    res = tune(tmp_path, "--locustfile", "locustfile.py")
    out = res.stdout
    assert "<- recommended" in out, out + res.stderr
    for path in ("/", "/delay", "/no-such-page"):
        assert f"\n{path} " in out.replace("│", " ").replace("|", " "), out
    # the only failures are the 404s of the page the app does not have
    assert f"failed: 404 {TIMES}" in out, out
    assert "note: 404 answers come from the app" in out
    # the pool followed the spike: instances came up from none
    line = next(x for x in out.splitlines() if x.startswith("recommended point, instances"))
    counts = [int(n) for n in line.split(": ", 1)[1].split()]
    assert max(counts) >= 1, line
    assert "demo's requests" not in res.stderr


@pytest.mark.timeout(120)
def test_tune_sends_a_list_of_paths(tmp_path: Path) -> None:
    res = tune(tmp_path, "--paths", "/,/healthz")
    assert "<- recommended" in res.stdout, res.stdout + res.stderr
    assert "failed:" not in res.stdout  # both paths exist
    assert "FORKPROXY_PATHS=/,/healthz -f pathsfile.py,shapefile.py" in res.stdout


@pytest.mark.timeout(120)
def test_tune_replays_an_access_log(tmp_path: Path) -> None:
    lines = [
        f'127.0.0.1 - - [06/Dec/2026:10:00:{s:02d} +0000] "GET {p} HTTP/1.1" 200 5 "-" "x"'
        for s in range(0, 40, 2)
        for p in ("/", "/delay?ms=5", "/gone")
    ]
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + '\n127.0.0.1 - - [x] "POST /echo HTTP/1.1" 200 1\n')
    res = tune(tmp_path, "--access-log", str(log))
    assert "<- recommended" in res.stdout, res.stdout + res.stderr
    assert f"failed: 404 {TIMES}" in res.stdout  # /gone
    assert "shape replay" in res.stdout


def test_access_log_parsing_keeps_timing_and_skips_what_cannot_be_replayed() -> None:
    log = accesslog.parse(
        [
            '1.2.3.4 - - [06/Dec/2026:10:00:05 +0000] "GET /b?x=1 HTTP/1.1" 200 5',
            '1.2.3.4 - - [06/Dec/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200 5 "-" "curl"',
            '1.2.3.4 - - [06/Dec/2026:10:00:07 +0000] "POST /form HTTP/1.1" 302 0',
            "garbage",
            "",
        ]
    )
    assert [(e.offset, e.target, e.name) for e in log.entries] == [
        (0.0, "/a", "/a"),
        (5.0, "/b?x=1", "/b"),
    ]
    assert (log.skipped, log.span) == (2, 5.0)


def test_failure_reasons_are_statuses_or_error_types() -> None:
    assert reason("HTTPError('404 Client Error: NOT FOUND for url: /x')") == "404"
    assert reason("BadStatusCode('http://h/x', code=503)") == "503"
    assert reason("ConnectionRefusedError(111, 'Connection refused')") == "ConnectionRefusedError"
    m = Measured(Point.defaults(2), 10, 432, 209, 12.0, 3.0, 2, reasons={"404": 200, "500": 9})
    assert m.why() == f"209 failed: 404 {TIMES}200, 500 {TIMES}9"


def test_a_relative_cwd_is_read_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    config = tmp_path / "site" / "forkproxy.toml"
    config.write_text('[backend]\napp = "app:app"\ncwd = "src"\n')
    assert load_base(str(config))["backend"]["cwd"] == str(tmp_path / "site" / "src")


def test_the_timeline_shows_the_pool_following_the_load() -> None:
    m = Measured(Point.defaults(2), 10, 10, 0, 5.0, 3.0, 4, instances=[0, 1, 4, 4, 2, 0])
    assert timeline(m) == "instances every 0.5 s: 0 1 4 4 2 0"
    m.instances = [1] * 100 + [5] + [0] * 19
    assert timeline(m).startswith("instances every 1 s: 1 1 ")
    assert timeline(m).split()[-10:] == ["5", *["0"] * 9]  # a peak between samples is kept


def test_the_load_sources_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--paths", "/", "--locustfile", "x.py"])
