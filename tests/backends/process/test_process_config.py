"""The [backend] table of the process backend: defaults, validation messages."""

from __future__ import annotations

from typing import Any

from forkproxy.backends.process import parse_config
from forkproxy.backends.process.config import DEFAULT_COMMAND, ProcessConfig
from forkproxy.backends.support.table import Table


def parse(**keys: Any) -> tuple[ProcessConfig, list[str]]:
    table = Table({"type": "process", **keys}, "backend")
    config = parse_config(table)
    return config, [str(p) for p in table.problems]


def test_defaults_are_fork_of_the_bundled_demo_app() -> None:
    # The demo ships inside the package (examples.app re-exports it), so a plain
    # `pip install forkproxy` + `forkproxy run` has an app to serve.
    config, problems = parse()
    assert problems == []
    assert (config.mode, config.app, config.app_kind) == (
        "fork",
        "forkproxy.backends.process.demo:create_app",
        "auto",
    )
    assert config.command == DEFAULT_COMMAND
    assert config.stop_grace == 5.0
    assert config.prefork == 0


def test_fork_app_must_be_module_colon_attr() -> None:
    _, problems = parse(app="examples.app")
    assert problems == [
        "backend.app: 'examples.app': expected \"module:attribute\", "
        'e.g. "forkproxy.backends.process.demo:create_app"'
    ]


def test_exec_command_needs_a_port_placeholder() -> None:
    _, problems = parse(mode="exec", command=["myserver", "--port", "8000"])
    assert len(problems) == 1 and problems[0].startswith("backend.command: must contain a {port}")
    _, problems = parse(mode="exec", command=["sh", "-c", "exec myserver --port $PORT"])
    assert problems == []


def test_command_string_is_shell_split() -> None:
    config, problems = parse(mode="exec", command="python -m app --port '{port}' --name 'a b'")
    assert problems == []
    assert config.command == ("python", "-m", "app", "--port", "{port}", "--name", "a b")


def test_every_problem_is_reported_with_its_key() -> None:
    _, problems = parse(mode="forkk", stop_grace="soon", colour="blue", env={"A": True})
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["backend.colour", "backend.env", "backend.mode", "backend.stop_grace"]


def test_durations_and_env() -> None:
    config, problems = parse(stop_grace="250ms", env={"A": "1", "N": 2}, pythonpath="src")
    assert problems == []
    assert config.stop_grace == 0.25
    assert config.env == {"A": "1", "N": "2"}
    assert config.pythonpath == ("src",)


def test_wsgi_keys_are_validated() -> None:
    config, problems = parse(app="app:app", app_kind="wsgi", threads=8, post_fork="app:reinit")
    assert problems == []
    assert (config.app_kind, config.threads, config.post_fork) == ("wsgi", 8, "app:reinit")
    assert parse()[0].threads == 4
    _, problems = parse(threads=0, post_fork="reinit", app_kind="flask")
    assert problems == [
        "backend.app_kind: 'flask' is not one of: auto, aiohttp, asgi, wsgi",
        "backend.threads: 0 is below the minimum 1",
        "backend.post_fork: 'reinit': expected \"module:function\"",
    ]
