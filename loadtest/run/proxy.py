"""Run a forkproxy subprocess from a generated TOML config and wait until it serves.

Used by the benchmark sections and by tune; the config is the user's (or a built-in app
config) merged with the pool settings under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from forkproxy.loadtest.report.stats import state_of
from forkproxy.loadtest.run import configs
from forkproxy.loadtest.run.procs import (
    PYTHON,
    REPO,
    Proc,
    forkproxy_cmd,
    free_port,
    port_taken,
    spawn,
    wait_http,
)
from forkproxy.loadtest.run.sampler import fetch_instances

FORK_BACKEND: dict[str, Any] = {
    "type": "process",
    "mode": "fork",
    "app": "examples.app:create_app",
}
EXEC_BACKEND: dict[str, Any] = {
    "type": "process",
    "mode": "exec",
    "command": [PYTHON, "-m", "examples.app", "--port", "{port}"],
}


@dataclass
class RunningProxy:
    url: str
    admin: str
    config_path: Path
    command: str
    proc: Proc
    config: dict[str, Any]

    @property
    def settings(self) -> str:
        """The generated config on one line, for reports: [pool] ...; [backend] ..."""
        parts = []
        for table in ("pool", "backend"):
            values = self.config.get(table, {})
            inner = ", ".join(f"{k} = {configs.inline(v)}" for k, v in values.items())
            parts.append(f"[{table}] {inner}")
        return "; ".join(parts)

    async def instances(self) -> list[Mapping[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            return await fetch_instances(s, self.admin)

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s,
            s.get(f"{self.admin}/metrics") as resp,
        ):
            return await resp.text()

    async def wait_ready_instances(self, n: int, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while True:
            insts = await self.instances()
            if sum(1 for i in insts if state_of(i) == "ready") >= n:
                return
            if self.proc.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"forkproxy: {n} ready instances not seen within {within:.0f}s "
                    f"(have {[state_of(i) for i in insts]})\n{self.proc.tail()}"
                )
            await asyncio.sleep(0.1)


def write_config(path: Path, base: Mapping[str, Any], pool: Mapping[str, Any]) -> dict[str, Any]:
    doc = configs.merge(base, {"pool": dict(pool)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(configs.dumps(doc))
    return doc


def app_config(backend: Mapping[str, Any] = FORK_BACKEND, name: str = "bench") -> dict[str, Any]:
    """A config for `backend` under pool name `name`-<pid>: a proxy reaps what carries its pool
    name and has no live owner, so two benches (or tunes) on one machine never share one."""
    return {"server": {"name": f"{name}-{os.getpid()}"}, "backend": dict(backend)}


async def _start(
    workdir: Path, name: str, config_path: Path, cwd: Path, command: list[str] | None = None
) -> tuple[Proc, list[str], int, int]:
    """Spawn forkproxy on free ports; retry with new ports if one was taken in the meantime
    (free_port() cannot reserve: another process on the box may bind it first)."""
    for attempt in range(3):
        port, admin_port = free_port(), free_port()
        argv = [
            *(command or forkproxy_cmd()),
            "run",
            "--config",
            str(config_path),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin",
            f"127.0.0.1:{admin_port}",
            "--log-level",
            "warning",
        ]
        proc = await spawn(f"forkproxy-{name}", argv, workdir / "logs", cwd=cwd)
        try:
            await wait_http(f"http://127.0.0.1:{admin_port}/healthz", 60, proc)
        except RuntimeError as e:
            await proc.stop()
            if port_taken(e) and attempt < 2:
                continue
            raise
        except BaseException:
            await proc.stop()
            raise
        return proc, argv, port, admin_port
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def forkproxy(
    workdir: Path,
    name: str,
    base: Mapping[str, Any],
    pool: Mapping[str, Any],
    *,
    wait_instances: int | None = None,
    cwd: Path = REPO,
    command: list[str] | None = None,
) -> AsyncIterator[RunningProxy]:
    """Start forkproxy with `base` + `pool`; yields once admin answers and, if asked,
    `wait_instances` instances are ready (defaults to pool.min_instances). `cwd` is where
    relative paths in the config resolve (the repo for the bundled example app); `command`
    runs another forkproxy than this checkout's (a compiled copy: loadtest/run/native.py)."""
    config_path = workdir / f"{name}.toml"
    doc = await asyncio.to_thread(write_config, config_path, base, pool)
    proc, argv, port, admin_port = await _start(workdir, name, config_path, cwd, command)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        running = RunningProxy(
            url=f"http://127.0.0.1:{port}",
            admin=admin,
            config_path=config_path,
            command=shlex.join(["forkproxy", *argv[len(command or forkproxy_cmd()) :]]),
            proc=proc,
            config=doc,
        )
        want = int(pool.get("min_instances", 0)) if wait_instances is None else wait_instances
        if want:
            await running.wait_ready_instances(want)
        yield running
    finally:
        await proc.stop(grace=20)
