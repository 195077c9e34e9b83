"""WebSocket upgrades: the handshake goes through the one upstream client (llhttp parses
the instance's answer). After a 101 bytes flow both ways untouched, with flow control
each way and an idle timeout, and the instance counts as busy until the tunnel ends.
A refused handshake is relayed like any response and the client connection closes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.http.flow import PEER, Flow
from proxy.http.forward import Forwarder
from proxy.http.request import Request
from proxy.http.upstream import Connection, ConnectTimeout, UpstreamError

log = logging.getLogger("forkproxy.tunnel")


async def websocket(fwd: Forwarder, req: Request) -> None:
    t_arrive = time.monotonic()
    lease = await fwd.acquire(req)
    if isinstance(lease, int):
        fwd.count(lease)
        return
    up: Connection | None = None
    try:
        t_send = time.monotonic()
        try:
            up, resp = await fwd.client.send(
                lease.instance.endpoint,
                fwd.head_for(req, b"", websocket=True),
                None,
                chunked=False,
                head_only=False,
                upgrade=True,
            )
            async with asyncio.timeout(fwd.cfg.server.upstream_header_timeout):
                await resp.headers_done
        except UpstreamError as exc:
            fwd.metrics.upstream_errors.labels(exc.kind).inc()
            log.warning("websocket upstream %s failed: %s", lease.slot.id, exc)
            fwd.pool.release(lease, broken=exc.strike and not exc.stale)
            if isinstance(exc, ConnectTimeout):
                fwd.count(504)
                req.respond(504, "Gateway Timeout: instance did not accept in time")
            else:
                fwd.count(502)
                req.respond(502, "Bad Gateway: instance refused the websocket")
            return
        except TimeoutError:
            fwd.metrics.upstream_errors.labels("timeout").inc()
            fwd.count(504)
            req.respond(504, "Gateway Timeout: instance did not answer in time")
            return
        req.keep_alive = False
        if not resp.upgraded:
            # refused: re-framed like any response, never copied raw
            fwd.count(await fwd.relay(req, up, resp, lease, t_arrive, t_send))
            return
        fwd.count(101)
        req.response_started = True
        req.status = 101
        head = [b"HTTP/1.1 101 %s\r\n" % (resp.reason or b"Switching Protocols")]
        head.extend(n + b": " + v + b"\r\n" for n, v in resp.raw_headers)
        head.append(b"\r\n")
        req.conn.write(b"".join(head) + resp.trailing)
        await _pump(fwd, req, up)
    finally:
        if up is not None:
            fwd.client.release(up)
        fwd.pool.release(lease)


async def _pump(fwd: Forwarder, req: Request, up: Connection) -> None:
    """Raw bytes both ways until either side closes or nothing moves for
    tunnel_idle_timeout (nginx: proxy_read_timeout on an upgraded connection)."""
    conn = req.conn
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    last = loop.time()

    def end() -> None:
        if not done.done():
            done.set_result(None)

    def pipe(write: Callable[[bytes], None], dst: Flow, src: Flow) -> Callable[[bytes], None]:
        """Bytes from src's socket to dst's; src stops reading while dst is full."""
        dst.on_writable = lambda: src.resume(PEER)

        def send(data: bytes) -> None:
            nonlocal last
            last = loop.time()
            write(data)
            if dst.write_paused:
                src.pause(PEER)

        return send

    up.sink = pipe(conn.write, conn.flow, up.flow)
    up.on_eof = end
    to_instance = conn.tunnel = pipe(up.write, up.flow, conn.flow)
    conn.tunnel_eof = up.write_eof
    held = conn.take_held()
    if held:
        to_instance(held)
    if up.closed:
        end()
    idle = fwd.cfg.server.tunnel_idle_timeout
    while not done.done():
        remaining = last + idle - loop.time()
        if remaining <= 0:
            fwd.metrics.upstream_errors.labels("tunnel_idle").inc()
            log.info("websocket tunnel idle for %.0fs: closed", idle)
            break
        await asyncio.wait([done], timeout=remaining)
    up.close()
