"""A raw-TCP "instance" for the desync tests, run by the exec backend as
`python scripted_instance.py PORT DIR`. It frames what it receives with h11 (not llhttp,
the proxy's parser), appends each request to DIR/requests.jsonl, and answers:

- `/s/NAME`: the raw bytes of DIR/NAME.json's "parts" (hex), `pause` seconds apart,
  optionally before reading the body (`early`), then closes if `close`;
- anything else: 200 with the request target as the body, so a client can tell that the
  answer it got is the answer to its own request."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import h11

DIR = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")
_ids = itertools.count(1)


def record(entry: dict[str, Any]) -> None:
    with (DIR / "requests.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn_id = next(_ids)
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            req: h11.Request | None = None
            body = b""
            script: dict[str, Any] = {}
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE and req is None:
                        return
                    continue
                if isinstance(event, h11.Request):
                    req = event
                    target = req.target.decode()
                    if target.startswith("/s/"):
                        script = json.loads((DIR / f"{target[3:]}.json").read_text())
                        if script.get("early"):
                            await answer(writer, script)
                            if script.get("close"):
                                record(entry(conn_id, req, b""))
                                return
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert req is not None
            record(entry(conn_id, req, body))
            if not script:
                target_b = bytes(req.target)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(target_b), target_b)
                )
                await writer.drain()
            elif not script.get("early"):
                await answer(writer, script)
                if script.get("close"):
                    return
            # h11 moves on only when both sides are DONE: our side "answers" through it
            # too (its bytes are discarded; the raw ones above are what the proxy got)
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        record({"conn": conn_id, "error": str(exc)})
    except ConnectionError:
        pass
    finally:
        writer.close()


def entry(conn_id: int, req: h11.Request, body: bytes) -> dict[str, Any]:
    return {
        "conn": conn_id,
        "method": req.method.decode(),
        "target": req.target.decode(),
        "headers": [[n.decode(), v.decode("latin-1")] for n, v in req.headers],
        "body": body.decode("latin-1"),
    }


async def answer(writer: asyncio.StreamWriter, script: dict[str, Any]) -> None:
    for i, part in enumerate(script["parts"]):
        if i and script.get("pause"):
            await asyncio.sleep(script["pause"])
        writer.write(bytes.fromhex(part))
        await writer.drain()
    if script.get("close"):
        writer.close()


if __name__ == "__main__":
    from raw_instance import serve  # run as a script: its folder is on sys.path

    serve(handle)
