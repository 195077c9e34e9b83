"""The swarm backend's pure parts, no engine needed: its [backend] table (every problem
reported with its key path), service names, the spec sent to the swarm, death reasons."""

from __future__ import annotations

from typing import Any

from forkproxy.backends.support.table import Table
from forkproxy.backends.swarm import parse_config
from forkproxy.backends.swarm.services import _spec, service_name
from forkproxy.backends.swarm.watch import death_reason


def problems(data: dict[str, Any]) -> list[str]:
    table = Table(data, "backend")
    parse_config(table)
    return [str(p) for p in table.problems]


def test_defaults() -> None:
    cfg = parse_config(Table({"image": "app:1"}, "backend"))
    assert cfg.manager == "unix:///var/run/docker.sock"
    assert (cfg.port, cfg.memory, cfg.cpus, cfg.stop_grace) == (8080, 256 * 1024**2, 0.5, 5.0)
    assert (cfg.constraints, cfg.preferences, cfg.command) == ((), (), None)


def test_every_key_parses() -> None:
    cfg = parse_config(
        Table(
            {
                "image": "app:1",
                "command": ["httpd", "-f"],
                "env": {"A": "1"},
                "port": 9000,
                "manager": "tcp://10.0.0.1:2375",
                "memory": "64m",
                "cpus": 1.5,
                "constraints": ["node.labels.zone == a", "node.role!=manager"],
                "preferences": ["node.labels.rack", "spread=node.labels.zone"],
                "stop_grace": "3s",
                "poll": "100ms",
                "engine_retry": "5s",
            },
            "backend",
        )
    )
    assert cfg.command == ("httpd", "-f")
    assert cfg.memory == 64 * 1024**2 and cfg.cpus == 1.5 and cfg.port == 9000
    assert cfg.constraints == ("node.labels.zone == a", "node.role!=manager")
    assert cfg.preferences == ("node.labels.rack", "node.labels.zone")
    assert (cfg.stop_grace, cfg.poll, cfg.engine_retry) == (3.0, 0.1, 5.0)


def test_bad_values_name_their_key_and_what_is_allowed() -> None:
    found = problems(
        {
            "image": "app:1",
            "manager": "docker.sock",
            "constraints": ["zone=a"],
            "preferences": ["binpack=node.labels.x"],
            "memory": "1m",
            "command": [],
            "poll": "1ms",
            "placement": "x",
        }
    )
    text = "\n".join(found)
    assert "backend.manager" in text and "unix://" in text
    assert "backend.constraints" in text and "'<attribute> == <value>'" in text
    assert "backend.preferences" in text and "only spread" in text
    assert "backend.memory" in text and "6m" in text
    assert "backend.command" in text
    assert "backend.poll" in text
    assert "placement" in text  # unknown key


def test_image_is_required() -> None:
    assert any("backend.image" in p for p in problems({}))


def test_service_names_are_dns_labels() -> None:
    assert service_name("web", "i-1") == "forkproxy-web-i-1"
    assert service_name("a_b.c", "i_2") == "forkproxy-a-b-c-i-2"
    long = service_name("p" * 80, "i-1")
    assert len(long) == 63 and long != service_name("p" * 81, "i-1")


def test_the_spec_carries_limits_placement_labels_and_a_host_port() -> None:
    cfg = parse_config(
        Table(
            {
                "image": "app:1",
                "memory": "64m",
                "cpus": 0.25,
                "constraints": ["node.labels.zone == a"],
                "preferences": ["node.labels.rack"],
                "env": {"X": "1"},
            },
            "backend",
        )
    )
    spec = _spec(cfg, {"io.forkproxy.pool": "p"}, {"FORKPROXY_INSTANCE_ID": "i"})
    task = spec["task_template"]
    assert task["Resources"] == {"Limits": {"MemoryBytes": 64 * 1024**2, "NanoCPUs": 250_000_000}}
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Placement"]["Constraints"] == ["node.labels.zone == a"]
    assert task["Placement"]["Preferences"] == [
        {"Spread": {"SpreadDescriptor": "node.labels.rack"}}
    ]
    assert task["ContainerSpec"]["Labels"] == {"io.forkproxy.pool": "p"}
    assert sorted(task["ContainerSpec"]["Env"]) == ["FORKPROXY_INSTANCE_ID=i", "X=1"]
    assert spec["labels"] == {"io.forkproxy.pool": "p"}
    assert spec["mode"] == {"replicated": {"Replicas": 1}}
    assert spec["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}
    ]


def test_death_reasons() -> None:
    def task(state: str, err: str = "", code: int | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"State": state, "Err": err}
        if code is not None:
            status["ContainerStatus"] = {"ExitCode": code}
        return {"Status": status}

    assert death_reason(None) == "removed"
    assert death_reason(task("failed", "task: non-zero exit (137)", 137)) == "exited:137"
    assert death_reason(task("complete", code=0)) == "exited:0"
    assert death_reason(task("failed", "task: non-zero exit (2)")) == "exited:2"
    assert death_reason(task("orphaned")) == "orphaned"
    assert death_reason(task("shutdown")) == "shutdown"
