"""Config validation: every problem reported with its key path and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkproxy.backends.support.table import ConfigError, parse_duration, parse_size
from forkproxy.proxy.cli import main
from forkproxy.proxy.config import load, parse, parse_address, with_overrides


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2", 2.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "-1s", True, "", [1]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_sizes() -> None:
    assert parse_size("64k") == 65536
    assert parse_size("10MiB") == 10 * 1024**2
    assert parse_size(12) == 12


def test_defaults_are_valid() -> None:
    cfg = parse({})
    assert str(cfg.server.listen) == "127.0.0.1:8080"
    assert cfg.server.admin is not None and cfg.server.admin.port == 9090
    assert cfg.backend_type == "process"
    # pool: priced by what the pool measures, packed so surplus goes idle
    assert cfg.pool.target_concurrency is None and cfg.pool.idle_ttl is None
    assert cfg.pool.routing == "pack"


def test_pool_auto_keys_take_auto_or_a_value() -> None:
    cfg = parse({"pool": {"idle_ttl": "auto", "target_concurrency": "auto"}}).pool
    assert cfg.idle_ttl is None and cfg.target_concurrency is None
    cfg = parse({"pool": {"idle_ttl": "90s", "target_concurrency": 7}}).pool
    assert cfg.idle_ttl == 90.0 and cfg.target_concurrency == 7.0
    with pytest.raises(ConfigError) as info:
        parse({"pool": {"idle_ttl": "soon", "target_concurrency": "most"}})
    by_path = {p.path: p.message for p in info.value.problems}
    assert '(or "auto")' in by_path["pool.idle_ttl"]
    assert '(or "auto")' in by_path["pool.target_concurrency"]


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            {
                "server": {"listen": "nohost", "shutdown_timeout": "soon", "bogus": 1},
                "pool": {"max_concurrency": 0, "idle_ttl": "5 minutes", "max_queue": "lots"},
                "backend": {"type": "kubernetes"},
                "extra": {},
            }
        )
    text = str(info.value)
    paths = [p.path for p in info.value.problems]
    assert "server.listen" in paths
    assert "server.shutdown_timeout" in paths
    assert "server.bogus" in paths and "unknown key (allowed:" in text
    assert "pool.max_concurrency" in paths and "below the minimum 1" in text
    assert "pool.idle_ttl" in paths
    assert "pool.max_queue" in paths
    assert "backend.type" in paths and "docker, process, swarm, vsphere" in text
    assert "extra" in paths


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"pool": {"max_concurrency": 4, "target_concurrency": 9, "min_instances": 30}})
    paths = [p.path for p in info.value.problems]
    assert "pool.target_concurrency" in paths and "pool.min_instances" in paths


def test_address_parsing_and_overrides() -> None:
    assert parse_address("[::1]:80").host == "::1"
    with pytest.raises(ValueError):
        parse_address("host:99999")
    cfg = with_overrides(parse({}), listen="127.0.0.1:0", admin="off")
    assert cfg.server.listen.port == 0 and cfg.server.admin is None


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[pool]\nmax_concurrency = "ten"\nwarm = 1\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "pool.max_concurrency" in err and "pool.warm: unknown key" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("[pool\n")
    assert main(["check-config", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2


def test_example_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(root.glob("*.toml")):
        load(path)


def test_client_header_and_admin_edge_keys() -> None:
    d = parse({}).server
    assert "x-real-ip" in d.drop_client_headers and "cf-connecting-ip" in d.drop_client_headers
    assert d.underscores_in_headers is False
    assert d.admin_allowed_hosts == () and d.admin_max_connections == 64
    assert 0 < d.admin_keepalive_timeout <= 75  # finite: aiohttp's own default is ~1 h
    s = parse(
        {
            "server": {
                "drop_client_headers": ["X-Mine"],
                "underscores_in_headers": True,
                "admin_allowed_hosts": ["Admin.Internal.", "*"],
                "admin_keepalive_timeout": "2s",
                "admin_max_connections": 5,
            }
        }
    ).server
    assert s.drop_client_headers == ("x-mine",) and s.underscores_in_headers
    assert s.admin_allowed_hosts == ("admin.internal", "*")
    assert s.admin_keepalive_timeout == 2.0 and s.admin_max_connections == 5
    with pytest.raises(ConfigError) as info:
        parse(
            {
                "server": {
                    "drop_client_headers": ["bad name", "Host"],
                    "underscores_in_headers": "no",
                    "admin_allowed_hosts": ["admin:9090"],
                    "admin_keepalive_timeout": 0,
                    "admin_max_connections": 0,
                }
            }
        )
    by_path: dict[str, list[str]] = {}
    for p in info.value.problems:
        by_path.setdefault(p.path, []).append(p.message)
    assert len(by_path["server.drop_client_headers"]) == 2
    assert "'host' cannot be dropped" in by_path["server.drop_client_headers"][1]
    assert "true or false" in by_path["server.underscores_in_headers"][0]
    assert "without port" in by_path["server.admin_allowed_hosts"][0]
    assert "minimum" in by_path["server.admin_keepalive_timeout"][0]
    assert "minimum 1" in by_path["server.admin_max_connections"][0]


def test_a_typo_gets_the_key_it_probably_meant() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"pool": {"max_instance": 3}, "server": {"bogus": 1}})
    messages = [str(p) for p in info.value.problems]
    assert "pool.max_instance: unknown key (did you mean max_instances?)" in messages
    # nothing close: the allowed keys, as before
    assert any(m.startswith("server.bogus: unknown key (allowed: access_log,") for m in messages)


@pytest.mark.parametrize("value", [8080, True])
def test_an_address_that_is_not_a_string_is_one_clear_problem(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"server": {"listen": value}})
    (problem,) = info.value.problems
    port = 8080 if value is True else value
    assert str(problem) == (
        f'server.listen: expected "HOST:PORT" in quotes, e.g. "127.0.0.1:{port}", got {value!r}'
    )


def test_a_config_file_must_name_its_fork_app(tmp_path: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:0"\n[backend]\ntype = "process"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    (problem,) = info.value.problems
    assert problem.path == "backend.app" and problem.message.startswith("missing: name your app")
    # exec mode needs no app; no file (`forkproxy run`) serves the demo
    path.write_text('[backend]\nmode = "exec"\ncommand = ["python", "-m", "x", "{port}"]\n')
    assert load(path).backend.mode == "exec"
    assert parse({}).backend.app == "forkproxy.backends.process.demo:create_app"
    path.write_text('[server]\nname = "x"\n')  # no [backend]: the proxy tuned for the demo
    assert load(path).backend.app == "forkproxy.backends.process.demo:create_app"


def test_a_relative_cwd_is_read_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site" / "src").mkdir(parents=True)
    path = tmp_path / "site" / "forkproxy.toml"
    path.write_text('[backend]\napp = "app:app"\ncwd = "src"\n')
    monkeypatch.chdir("/")
    assert load(path).backend.abs_cwd == str(tmp_path / "site" / "src")
    path.write_text(f'[backend]\napp = "app:app"\ncwd = "{tmp_path}"\n')
    assert load(path).backend.abs_cwd == str(tmp_path)


def test_warmup_requests_are_paths_and_warmup_stays_a_hook() -> None:
    cfg = parse({"backend": {"app": "a:b", "warmup_requests": ["/", "http://site.test/x"]}})
    assert cfg.backend.warmup_requests == ("/", "http://site.test/x")
    assert cfg.backend.warmup_spec("/healthz") == {
        "paths": ["/", "http://site.test/x"],
        "configured": True,
    }
    assert parse({}).backend.warmup_spec("/healthz") == {
        "paths": ["/healthz"],
        "configured": False,
    }
    with pytest.raises(ConfigError) as info:
        parse({"backend": {"warmup": ["/"], "warmup_requests": ["admin/"]}})
    assert [str(p) for p in info.value.problems] == [
        'backend.warmup: a hook "module:function"; warm-up paths go in warmup_requests',
        "backend.warmup_requests: 'admin/': expected a path (\"/admin/login/\") or "
        '"http://host/path"',
    ]
