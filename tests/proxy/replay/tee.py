"""A recording TCP relay between forkproxy and a real server: `python tee.py LISTEN_PORT
UPSTREAM_PORT DIR` (the exec backend runs it as the instance). Every connection it
accepts gets its own connection to the server, and the bytes of each direction are
appended to DIR/<pid>-<n>.c2s (proxy -> server) and .s2c (server -> proxy) before they
are passed on, so the record is complete by the time the other side has them. It reads
the server eagerly: bytes the proxy never reads (a smuggled answer) are recorded too."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from pathlib import Path


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: Path) -> None:
    with record.open("ab", buffering=0) as f:
        try:
            while data := await src.read(65536):
                f.write(data)
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()  # a half-close passes through as one
        except (ConnectionError, OSError):
            dst.close()


async def start(listen_port: int, upstream_port: int, out: Path) -> asyncio.Server:
    """The relay, listening; the caller serves or closes it."""
    ids = itertools.count(1)

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        name = f"{os.getpid()}-{next(ids):05d}"
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            cw.close()
            return
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(cr, uw, out / f"{name}.c2s"))
                tg.create_task(_pump(ur, cw, out / f"{name}.s2c"))
        finally:
            for w in (cw, uw):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", listen_port)


async def _main(listen_port: int, upstream_port: int, out: Path) -> None:
    server = await start(listen_port, upstream_port, out)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))
