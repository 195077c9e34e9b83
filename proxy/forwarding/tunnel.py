"""WebSocket upgrades: the handshake goes through the one upstream client (llhttp parses
the instance's answer). After a 101 bytes flow both ways untouched, with flow control
each way and an idle timeout, and the instance counts as busy until the tunnel ends.
A refused handshake is relayed like any response and the client connection closes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from forkproxy.proxy.forwarding.failures import upstream_failure
from forkproxy.proxy.forwarding.forward import Forwarder
from forkproxy.proxy.http.flow import PEER, Flow
from forkproxy.proxy.http.request import Request
from forkproxy.proxy.http.upstream import Connection, UpstreamClient, UpstreamError
from forkproxy.proxy.metrics import Metrics

log = logging.getLogger("forkproxy.tunnel")


class Tunnel:
    """Slots, request heads, refusals and counts come from the forwarder; the upstream
    client, the metrics and the timeouts are given."""

    def __init__(
        self,
        fwd: Forwarder,
        client: UpstreamClient,
        metrics: Metrics,
        *,
        header_timeout: float,
        idle_timeout: float,
    ) -> None:
        self.fwd = fwd
        self.client = client
        self.metrics = metrics
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout

    async def websocket(self, req: Request) -> None:
        fwd = self.fwd
        t_arrive = time.monotonic()
        async with fwd.lease(req) as lease:
            if isinstance(lease, int):
                fwd.count(lease)
                return
            req.lease = lease  # the access log names the instance
            up: Connection | None = None
            try:
                t_send = time.monotonic()
                try:
                    up, resp = await self.client.send(
                        lease.instance.endpoint,
                        fwd.head_for(req, b"", websocket=True),
                        None,
                        chunked=False,
                        head_only=False,
                        upgrade=True,
                    )
                    async with asyncio.timeout(self.header_timeout):
                        await resp.headers_done
                except (UpstreamError, TimeoutError) as exc:
                    failure = upstream_failure(exc, websocket=True)
                    self.metrics.upstream_errors.labels(failure.kind).inc()
                    if isinstance(exc, UpstreamError):
                        log.warning("websocket upstream %s failed: %s", lease.slot.id, exc)
                        if exc.strike and not exc.stale:
                            lease.mark_broken()
                    fwd.count(failure.status)
                    req.respond(failure.status, failure.text)
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
                await self._pump(req, up)
            finally:
                if up is not None:
                    self.client.release(up)

    async def _pump(self, req: Request, up: Connection) -> None:
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
        idle = self.idle_timeout
        while not done.done():
            remaining = last + idle - loop.time()
            if remaining <= 0:
                self.metrics.upstream_errors.labels("tunnel_idle").inc()
                log.info("websocket tunnel idle for %.0fs: closed", idle)
                break
            await asyncio.wait([done], timeout=remaining)
        up.close()
