"""The docker backend's pure parts, no engine needed: its [backend] table (every problem
reported with its key path), event parsing and endpoint selection."""

from __future__ import annotations

from typing import Any

import pytest

from forkproxy.backends.base import Endpoint
from forkproxy.backends.docker import parse_config
from forkproxy.backends.docker.events import parse
from forkproxy.backends.docker.ops import endpoint_of
from forkproxy.backends.engine.client import Engine
from forkproxy.backends.errors import StartError
from forkproxy.backends.support.table import Table


def problems(data: dict[str, Any]) -> list[str]:
    table = Table(data, "backend")
    parse_config(table)
    return [str(p) for p in table.problems]


def test_defaults() -> None:
    cfg = parse_config(Table({"image": "app:1"}, "backend"))
    assert cfg.engines == ("unix:///var/run/docker.sock",)
    assert (cfg.port, cfg.endpoint, cfg.pull, cfg.paused_pool) == (8080, "published", "never", 0)
    assert (cfg.memory, cfg.cpus, cfg.stop_timeout, cfg.adopt) == (256 * 1024**2, 0.5, 5.0, False)
    assert cfg.command is None


def test_every_key_parses() -> None:
    cfg = parse_config(
        Table(
            {
                "image": "app:1",
                "command": ["sh", "-c", "run"],
                "env": {"A": "1", "N": 2},
                "port": 9000,
                "engines": ["tcp://10.0.0.2:2375", "ssh://me@host"],
                "network": "apps",
                "endpoint": "container_ip",
                "publish_host": "0.0.0.0",
                "memory": "1g",
                "cpus": 2,
                "pull": "missing",
                "paused_pool": 3,
                "stop_timeout": "250ms",
                "adopt": True,
                "engine_retry": "1m",
            },
            "backend",
        )
    )
    assert cfg.command == ("sh", "-c", "run")
    assert cfg.env == {"A": "1", "N": "2"}
    assert cfg.memory == 1024**3 and cfg.cpus == 2.0 and cfg.stop_timeout == 0.25
    assert cfg.engine_retry == 60.0 and cfg.paused_pool == 3 and cfg.adopt


def test_problems_name_their_keys() -> None:
    found = problems(
        {
            "command": [],
            "engines": ["docker.sock"],
            "endpoint": "magic",
            "pull": "sometimes",
            "paused_pool": -1,
            "memory": "1k",
            "port": 0,
            "colour": "blue",
        }
    )
    joined = "\n".join(found)
    for key in ("image", "command", "engines", "endpoint", "pull", "paused_pool", "memory", "port"):
        assert f"backend.{key}:" in joined, f"no problem reported for {key}: {found}"
    assert "backend.colour: unknown key" in joined
    assert "'sometimes' is not one of: never, missing, always" in joined


def test_one_pass_reports_every_problem() -> None:
    table = Table({"pull": "x", "cpus": -1}, "backend")
    parse_config(table)
    assert sorted(p.path for p in table.problems) == [
        "backend.cpus",
        "backend.image",
        "backend.pull",
    ]


def test_event_parsing() -> None:
    ev = parse(
        {
            "Type": "container",
            "Action": "die",
            "Actor": {"ID": "abc", "Attributes": {"exitCode": "137"}},
        }
    )
    assert (ev.action, ev.container_id, ev.exit_code) == ("die", "abc", "137")
    old_style = parse({"status": "oom", "id": "def"})
    assert (old_style.action, old_style.container_id, old_style.exit_code) == ("oom", "def", "")


def _attrs(port: str | None, ip: str = "172.17.0.5") -> dict[str, Any]:
    ports = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": port}]} if port else {}
    return {"NetworkSettings": {"Ports": ports, "Networks": {"bridge": {"IPAddress": ip}}}}


def test_endpoint_published_and_container_ip() -> None:
    local = Engine("unix:///var/run/docker.sock", 10)
    remote = Engine("tcp://10.0.0.2:2375", 10)
    published = parse_config(Table({"image": "a"}, ""))
    assert endpoint_of(published, local, _attrs("32768")) == Endpoint("127.0.0.1", 32768)
    anywhere = parse_config(Table({"image": "a", "publish_host": "0.0.0.0"}, ""))
    assert endpoint_of(anywhere, remote, _attrs("32768")) == Endpoint("10.0.0.2", 32768)
    by_ip = parse_config(Table({"image": "a", "endpoint": "container_ip"}, ""))
    assert endpoint_of(by_ip, local, _attrs(None)) == Endpoint("172.17.0.5", 8080)
    with pytest.raises(StartError) as err:
        endpoint_of(published, local, _attrs(None))
    assert err.value.reason == "no_endpoint"
