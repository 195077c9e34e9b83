"""A pytest plugin that points pytest-httpbin's `httpbin` fixture at httpbin served by
forkproxy in fork mode (app_kind = "wsgi"), so a third-party suite written against
httpbin - requests' own tests - runs through the proxy unchanged:

    PYTHONPATH=$FORKPROXY:$FORKPROXY/tests/backends/process \
        pytest -p no:httpbin -p httpbin_through_forkproxy tests/test_requests.py

(from an unpacked requests sdist, with forkproxy, httpbin and pytest-httpbin installed).
`httpbin_secure` stays pytest-httpbin's direct TLS server: forkproxy speaks plain HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpbin.plugin import (  # the TLS side, unchanged
    class_based_httpbin_secure,
    httpbin_ca_bundle,
    httpbin_secure,
)

__all__ = ["class_based_httpbin_secure", "httpbin_ca_bundle", "httpbin_secure"]


class _Server:
    def __init__(self, url: str) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)

    def __add__(self, other: str) -> str:  # pytest-httpbin's server object supports this
        return self.url + other


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    port = _free_port()
    cfg: Path = tmp_path_factory.mktemp("forkproxy") / "httpbin.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
admin = "off"
name = "httpbin-{os.getpid()}"
[pool]
idle_ttl = "120s"
[backend]
type = "process"
mode = "fork"
app = "httpbin:app"
app_kind = "wsgi"
threads = 8
prefork = 1
"""
    )
    proc = subprocess.Popen([sys.executable, "-m", "forkproxy", "run", "-c", str(cfg)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/get", timeout=10):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)
    try:
        yield _Server(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="session", params=["http", "https"])
def httpbin_both(
    request: pytest.FixtureRequest, httpbin: _Server, httpbin_secure: object
) -> object:
    return httpbin if request.param == "http" else httpbin_secure


@pytest.fixture(scope="class")
def class_based_httpbin(request: pytest.FixtureRequest, httpbin: _Server) -> None:
    request.cls.httpbin = httpbin
