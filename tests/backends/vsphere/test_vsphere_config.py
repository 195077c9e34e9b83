"""The `[backend] type = "vsphere"` table: validation and the pieces computed from it.
Pure: no simulator needed."""

from __future__ import annotations

from typing import Any

import pytest

from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.support.table import ConfigError
from forkproxy.backends.vsphere.config import DEFAULT_PASSWORD_ENV, VsphereConfig
from tests.backends.vsphere.conftest import parse

BASE: dict[str, Any] = {
    "type": "vsphere",
    "host": "vcenter.example",
    "user": "svc-forkproxy",
    "parent_vm": "web-parent",
}


def problems(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as err:
        parse({**BASE, **overrides})
    return str(err.value)


def test_defaults() -> None:
    cfg = parse(dict(BASE))
    assert isinstance(cfg, VsphereConfig)
    assert (cfg.port, cfg.mode, cfg.name_prefix, cfg.app_port) == (
        443,
        "instant",
        "forkproxy-",
        8080,
    )
    assert cfg.guest_ip_timeout == 120.0
    assert cfg.max_concurrent_clones == 4
    assert cfg.container is None and cfg.ip_range is None and not cfg.insecure


def test_a_password_in_the_file_is_refused_with_the_way_out() -> None:
    text = problems(password="hunter2")
    assert "backend.password: a password must not be in the config file" in text
    assert DEFAULT_PASSWORD_ENV in text
    assert "hunter2" not in text


def test_password_comes_from_env_or_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv(DEFAULT_PASSWORD_ENV, raising=False)
    with pytest.raises(BackendConfigError, match=DEFAULT_PASSWORD_ENV):
        parse(dict(BASE)).password()
    monkeypatch.setenv("MY_PW", "s3cret")
    assert parse({**BASE, "password_env": "MY_PW"}).password() == "s3cret"
    (tmp_path / "pw").write_text("from-file\n")
    assert parse({**BASE, "password_file": str(tmp_path / "pw")}).password() == "from-file"
    with pytest.raises(BackendConfigError, match="cannot read"):
        parse({**BASE, "password_file": str(tmp_path / "missing")}).password()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"mode": "linked"}, "backend.snapshot: required in linked mode"),
        ({"snapshot": "base"}, 'only used with mode = "linked"'),
        ({"mode": "full"}, "'full' is not one of: instant, linked"),
        ({"hostname": "x"}, "backend.hostname: unknown key"),
        ({"placement": {"resource_pool": "a", "cluster": "b"}}, "resource_pool or cluster"),
        ({"placement": {"rack": "r1"}}, "backend.placement.rack: unknown key"),
        ({"guestinfo": {"role": "{nope}"}}, "unknown field {nope}"),
        ({"guestinfo": {"bad key": "x"}}, "keys are letters"),
        ({"ip_range": "10.0.0.9-10.0.0.1"}, "the last address must follow the first"),
        ({"ip_range": "not-an-ip"}, "backend.ip_range"),
        ({"ca_file": "/ca.pem", "insecure": True}, "set ca_file or insecure = true, not both"),
        ({"name_prefix": ""}, "must not be empty"),
        ({"readiness_path": "health"}, "must start with '/'"),
        ({"container": {"engine_url": "tcp://{host}:2375"}}, "backend.container.image"),
        ({"max_concurrent_clones": 0}, "below the minimum 1"),
    ],
)
def test_bad_values_are_reported_with_their_key(overrides: dict[str, Any], expected: str) -> None:
    assert expected in problems(**overrides)


def test_ip_range_forms() -> None:
    cfg = parse({**BASE, "ip_range": "10.0.0.10-10.0.0.12"})
    assert cfg.ip_pool() == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    cfg = parse({**BASE, "ip_range": "192.168.5.0/30"})
    assert cfg.ip_pool() == ["192.168.5.1", "192.168.5.2"]


def test_linked_mode_and_container_table() -> None:
    cfg = parse(
        {
            **BASE,
            "mode": "linked",
            "snapshot": "golden",
            "placement": {"cluster": "C0", "datastore": "DS1", "folder": "clones"},
            "container": {"image": "registry.local/app:1", "command": ["serve", "--port=8080"]},
            "guestinfo": {"role": "web-{index}", "fqdn": "{hostname}.example"},
        }
    )
    assert cfg.snapshot == "golden"
    assert cfg.placement.cluster == "C0" and cfg.placement.folder == "clones"
    assert cfg.container is not None
    assert cfg.container.command == ("serve", "--port=8080")
    assert cfg.container.engine_url == "tcp://{ip}:2375"


def test_usable_guest_ips() -> None:
    from forkproxy.backends.vsphere.inventory import usable_ip

    assert usable_ip("172.18.0.5", "172.18.0.2")
    assert not usable_ip("172.18.0.2", "172.18.0.2"), "the parent's IP, stale after the fork"
    assert not usable_ip("", None) and not usable_ip(None, None)
    assert not usable_ip("fe80::1", None) and not usable_ip("169.254.3.4", None)
    assert usable_ip("2001:db8::5", None)
