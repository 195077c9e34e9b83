"""How the vsphere bench finds its simulator: env file, variables over the file, clear reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkproxy.loadtest import vcsim
from forkproxy.loadtest.run.procs import free_port


def write_env(path: Path, **facts: str) -> Path:
    path.write_text("".join(f"FORKPROXY_VCSIM_{k}={v}\n" for k, v in facts.items()))
    return path


def test_missing_facts_are_named(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / "vcsim.env", HOST="127.0.0.1", PORT="1")
    with pytest.raises(vcsim.Unavailable) as err:
        vcsim.find({"FORKPROXY_VCSIM_ENV": str(env_file)})
    msg = str(err.value)
    assert "FORKPROXY_VCSIM_USER" in msg and "FORKPROXY_VCSIM_CA_FILE" in msg
    assert "FORKPROXY_VCSIM_HOST" not in msg and ".ci/vcsim.sh" in msg


def test_variables_win_over_the_file_and_a_dead_simulator_is_reported(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    env_file = write_env(
        tmp_path / "vcsim.env",
        HOST="127.0.0.1",
        PORT="18443",
        USER="u",
        PASSWORD="p",
        CA_FILE="/etc/ssl/certs/ca-certificates.crt",
    )
    environ = {"FORKPROXY_VCSIM_ENV": str(env_file), "FORKPROXY_VCSIM_PORT": str(closed)}
    with pytest.raises(vcsim.Unavailable, match=f"does not answer at https://127.0.0.1:{closed}"):
        vcsim.find(environ)


def test_a_port_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    facts = {"HOST": "h", "PORT": "x", "USER": "u", "PASSWORD": "p", "CA_FILE": "c"}
    env_file = write_env(tmp_path / "vcsim.env", **facts)
    with pytest.raises(vcsim.Unavailable, match="FORKPROXY_VCSIM_PORT='x' is not a port"):
        vcsim.find({"FORKPROXY_VCSIM_ENV": str(env_file)})
