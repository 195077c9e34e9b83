"""WebSocket upgrades: after the instance answers 101, bytes flow both ways untouched
for the socket's whole life, and the instance counts as busy until it closes."""

from __future__ import annotations

import asyncio
import logging

from proxy.http.forward import Forwarder
from proxy.http.headers import downstream_raw
from proxy.http.server import ClientError, HttpConnection, Request

log = logging.getLogger("forkproxy.tunnel")

_MAX_HEAD = 65536


async def websocket(fwd: Forwarder, req: Request, rest: bytes) -> None:
    upgrade = (req.header(b"upgrade") or b"").strip().lower()
    if upgrade != b"websocket":
        fwd.count(400)
        raise ClientError(400, "Bad Request: only websocket upgrades are supported")
    lease = await fwd.acquire(req)
    if isinstance(lease, int):
        fwd.count(lease)
        return
    writer: asyncio.StreamWriter | None = None
    try:
        ep = lease.instance.endpoint
        try:
            async with asyncio.timeout(fwd.cfg.server.upstream_connect_timeout):
                reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=_MAX_HEAD)
            writer.write(fwd.head_for(req, b"", websocket=True) + rest)
            async with asyncio.timeout(fwd.cfg.server.upstream_header_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            fwd.metrics.upstream_errors.labels("websocket").inc()
            log.warning("websocket upstream %s failed: %r", lease.slot.id, exc)
            fwd.count(502)
            req.respond(502, "Bad Gateway: instance refused the websocket")
            return
        except TimeoutError:
            fwd.metrics.upstream_errors.labels("timeout").inc()
            fwd.count(504)
            req.respond(504, "Gateway Timeout: instance did not answer in time")
            return
        status = head[9:12]
        if status != b"101" or not head.startswith(b"HTTP/1.1 "):
            # refused: its answer is re-framed like any response, never copied raw
            fwd.count(await _refusal(fwd, req, reader, head))
            return
        fwd.count(101)
        req.response_started = True
        conn = req.conn
        conn.write(head)

        up = writer

        def to_instance(data: bytes) -> None:
            up.write(data)
            if up.transport.get_write_buffer_size() > 1 << 20:
                conn.pause_reading()
                conn.server.tasks.spawn(_resume_after_drain(up, conn), "ws-drain")

        def client_eof() -> None:
            if up.can_write_eof() and not up.is_closing():
                up.write_eof()

        conn.tunnel = to_instance
        conn.tunnel_eof = client_eof
        conn.resume_reading()
        while data := await reader.read(65536):
            conn.write(data)
            await conn.drain()
    finally:
        if writer is not None:
            writer.close()
        fwd.pool.release(lease)


async def _refusal(fwd: Forwarder, req: Request, reader: asyncio.StreamReader, head: bytes) -> int:
    """Answer the client with the instance's non-101 response: its status and end-to-end
    headers, a body only if Content-Length framed it (small), else a 502."""
    line, *lines = head[:-4].split(b"\r\n")
    parts = line.split(b" ", 2)
    raw: list[tuple[bytes, bytes]] = []
    for h in lines:
        name, sep, value = h.partition(b":")
        if not sep or not name or name != name.strip():
            break
        raw.append((name, value.strip()))
    else:
        length = [v for n, v in raw if n.lower() == b"content-length"]
        chunked = any(n.lower() == b"transfer-encoding" for n, _ in raw)
        if (
            len(parts) >= 2
            and parts[0] in (b"HTTP/1.1", b"HTTP/1.0")
            and parts[1].isdigit()
            and 200 <= int(parts[1]) < 600
            and not chunked
            and len(length) <= 1
            and (not length or (length[0].isdigit() and int(length[0]) <= _MAX_HEAD))
        ):
            status = int(parts[1])
            try:
                body = await reader.readexactly(int(length[0])) if length else b""
            except asyncio.IncompleteReadError:
                body = None
            if body is not None:
                req.keep_alive = False
                reason = parts[2] if len(parts) > 2 else b""
                req.start_response(status, reason, downstream_raw(raw), length=len(body))
                req.conn.write(body)
                return status
    fwd.metrics.upstream_errors.labels("bad_response").inc()
    req.respond(502, "Bad Gateway: instance failed")
    return 502


async def _resume_after_drain(up: asyncio.StreamWriter, conn: HttpConnection) -> None:
    try:
        await up.drain()
    finally:
        conn.resume_reading()
