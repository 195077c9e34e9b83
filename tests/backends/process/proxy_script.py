"""A stand-in for a proxy process: creates a process backend (fork or exec mode),
starts two instances, prints {"pids": [...], "zygote": pid} (template included) and waits
to be killed."""

from __future__ import annotations

import asyncio
import json
import sys

from forkproxy.backends.base import BackendContext
from forkproxy.backends.process import _zygote_client, create_backend, parse_config
from forkproxy.backends.support.table import Table


async def main(pool: str, cwd: str, mode: str) -> None:
    keys = {"mode": mode, "cwd": cwd, "prefork": 1}
    if mode == "exec":
        keys = {
            "mode": mode,
            "cwd": cwd,
            "command": [sys.executable, "-m", "examples.app", "--port", "{port}"],
        }
    backend = create_backend(parse_config(Table(keys, "backend")), BackendContext(pool, "script"))
    await backend.prepare()
    started = [await backend.start(f"script-{i}") for i in range(2)]
    listed = [i.handle for i in await backend.list() if i.meta.get("kind") == "template"]
    zygote = _zygote_client.running()  # fork mode's shared zygote, the templates' parent
    pids = listed + [i.handle for i in started]
    print(json.dumps({"pids": pids, "zygote": zygote.pid if zygote else None}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
