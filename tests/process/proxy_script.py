"""A stand-in for a proxy process: creates a fork backend, starts two instances,
prints {"template": pid, "children": [pids]} and waits to be killed."""

from __future__ import annotations

import asyncio
import json
import sys

from backends.base import BackendContext
from backends.config import Table
from backends.process import create_backend, parse_config


async def main(pool: str, cwd: str) -> None:
    table = Table({"mode": "fork", "cwd": cwd}, "backend")
    backend = create_backend(parse_config(table), BackendContext(pool, "script-owner"))
    await backend.prepare()
    started = [await backend.start(f"script-{i}") for i in range(2)]
    template = [i for i in await backend.list() if i.meta.get("kind") == "template"]
    report = {"template": template[0].handle, "children": [i.handle for i in started]}
    print(json.dumps(report), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
