"""The data path: hold the request for a slot, forward it with both bodies streamed,
re-frame the response, retry what is safe to retry. Errors are short fixed texts."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator

from prometheus_client import Counter

from proxy.config import Config
from proxy.http.headers import HeaderRules, downstream_raw, server_timing, upstream_head
from proxy.http.server import ClientError, Request
from proxy.http.upstream import (
    ConnectFailed,
    Connection,
    ConnectTimeout,
    ReadTimeout,
    Response,
    SendTimeout,
    UpstreamClient,
    UpstreamError,
)
from proxy.metrics import Metrics
from proxy.pool import Lease, Pool, PoolError

log = logging.getLogger("forkproxy.forward")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
_MAX_STALE = 3  # retries on a fresh connection after a stale pooled one, not counted
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_POOL_TEXT = {
    "queue_full": "Service Unavailable: queue full",
    "start_failed": "Service Unavailable: no instance could be started",
    "shutting_down": "Service Unavailable: shutting down",
    "backend_down": "Service Unavailable: backend down",
}


class Forwarder:
    def __init__(self, cfg: Config, pool: Pool, metrics: Metrics) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        # an instance that stops reading a request body for upstream_header_timeout is
        # as stuck as one that never answers (nginx: proxy_send_timeout)
        self.client = UpstreamClient(
            cfg.server.upstream_connect_timeout,
            cfg.server.upstream_header_timeout,
            max_idle=lambda: max(64, pool.cfg.max_concurrency),
        )
        self.trusted = cfg.server.trusted_proxies
        self.header_rules = HeaderRules.build(
            cfg.server.drop_client_headers, underscores=cfg.server.underscores_in_headers
        )
        self._header_timeout = cfg.server.upstream_header_timeout
        self._server_timing = cfg.server.server_timing
        self._body_buffer = cfg.server.limits.body_buffer
        pool.gone_hooks.append(lambda inst: self.client.forget(inst.endpoint))
        self._by_status: dict[int, Counter] = {}
        self._latency = {k: metrics.latency.labels(k) for k in ("cold", "warm")}

    def aclose(self) -> None:
        self.client.close()

    def count(self, status: int) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self.metrics.requests.labels(str(status))
        counter.inc()

    async def handle(self, req: Request) -> None:
        try:
            status = await self._forward(req)
        except ClientError as exc:
            self.count(exc.status)
            raise

        except (ConnectionError, asyncio.CancelledError):
            self.count(499)  # the client went away (nginx's code for it)
            raise
        self.count(status)

    def _trusted(self, peer: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    async def acquire(self, req: Request) -> Lease | int:
        """A lease, or the status (503/504) it answered itself."""
        deadline = self.pool.clock() + self.pool.cfg.hold_timeout
        req.waiting = True  # a client that leaves now cancels this wait (server.py)
        try:
            return await self.pool.acquire(deadline)
        except PoolError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            if req.expect_continue and not req.body.complete:
                req.keep_alive = False  # the body never came: the connection can't be reused
            if exc.status == 504:
                req.respond(504, "Gateway Timeout: no instance became free in time")
                return 504
            req.respond(503, _POOL_TEXT.get(exc.reason, "Service Unavailable"))
            return 503
        finally:
            req.waiting = False

    async def _read_ahead(self, req: Request) -> None:
        """Read the body, or its first body_buffer bytes, before an instance slot is taken:
        a client that dribbles its body holds a connection, never a slot. Under Expect:
        100-continue the proxy answers 100 itself unless the declared body is larger than
        that, whose 100 waits for the instance (it may refuse the body first)."""
        buffer = self._body_buffer
        length = req.content_length
        if req.expect_continue:
            if length is not None and length > buffer:
                conn = req.conn
                req.body.on_first_read = lambda: conn.write(_CONTINUE)
                return
            req.conn.write(_CONTINUE)
        if buffer:
            await req.body.prefetch(buffer)

    def head_for(self, req: Request, framing: bytes, *, websocket: bool = False) -> bytes:
        return upstream_head(
            req.method,
            req.path,
            req.headers,
            peer=req.peer,
            trusted=self._trusted(req.peer),
            host=req.host,
            framing=framing,
            websocket=websocket,
            rules=self.header_rules,
        )

    async def _forward(self, req: Request) -> int:
        t_arrive = time.monotonic()
        body: AsyncIterator[bytes] | None = None
        if req.content_length is not None:
            framing = b"Content-Length: %d\r\n" % req.content_length
            if req.content_length:
                body = req.body
        elif req.chunked:  # re-chunked by us, extensions and trailers dropped
            framing = b"Transfer-Encoding: chunked\r\n"
            body = req.body
        else:
            framing = b""
        if body is not None and not req.body.complete:
            await self._read_ahead(req)
        head = self.head_for(req, framing)
        head_only = req.method == "HEAD"
        attempts = stale = 0
        while True:
            lease = await self.acquire(req)
            if isinstance(lease, int):
                return lease
            req.lease = lease
            if req.body.error is not None:  # broke while held: send the instance nothing
                self.pool.release(lease)
                raise req.body.error
            req.body.slot_taken()
            ep = lease.instance.endpoint
            t_send = time.monotonic()
            conn_up: Connection | None = None
            try:
                conn_up, upstream = await self.client.send(
                    ep,
                    head,
                    body,
                    chunked=req.chunked,
                    head_only=head_only,
                    on_info=req.informational,
                )
                conn_up.expect_head(self._header_timeout)
                await upstream.headers_done
            except UpstreamError as exc:
                if conn_up is not None:
                    conn_up.close()
                # the instance is suspect unless a pooled keep-alive connection merely
                # went stale under us, or it answered (badly): a malformed answer is the
                # app's answer to one request, not a sign the instance is gone
                self.pool.release(lease, broken=exc.strike and not exc.stale)
                self.metrics.upstream_errors.labels("stale" if exc.stale else exc.kind).inc()
                # Nothing reached the instance: any method. Else only an idempotent request
                # without a body (a streamed body cannot be replayed) whose instance closed
                # without a byte of response (nginx's proxy_next_upstream error).
                retry = not exc.sent or (exc.silent and body is None and req.method in IDEMPOTENT)
                if retry and exc.stale and stale < _MAX_STALE:
                    # not the instance's fault: its other pooled connections are likely
                    # stale too (it restarted or died); try a fresh one, free of charge
                    self.client.forget(ep)
                    stale += 1
                    self.metrics.retries.inc()
                    continue
                if retry and attempts < self.cfg.server.retry_attempts:
                    attempts += 1
                    self.metrics.retries.inc()
                    log.info("retrying on another instance after %s: %s", exc.kind, exc)
                    continue
                log.warning("upstream %s failed: %s", lease.slot.id, exc)
                req.keep_alive = req.keep_alive and req.body.complete
                if isinstance(exc, ConnectTimeout):  # nginx: proxy_connect_timeout -> 504
                    req.respond(504, "Gateway Timeout: instance did not accept in time")
                    return 504
                if isinstance(exc, SendTimeout):  # nginx: proxy_send_timeout -> 504
                    req.respond(504, "Gateway Timeout: instance stopped reading")
                    return 504
                if isinstance(exc, ConnectFailed):
                    req.respond(502, "Bad Gateway: instance unreachable")
                else:
                    req.respond(502, "Bad Gateway: instance failed")
                return 502
            except TimeoutError:
                if conn_up is not None:
                    conn_up.close()
                self.pool.release(lease)
                self.metrics.upstream_errors.labels("timeout").inc()
                req.keep_alive = req.keep_alive and req.body.complete
                req.respond(504, "Gateway Timeout: instance did not answer in time")
                return 504
            except BaseException:
                if conn_up is not None:
                    conn_up.close()
                self.pool.release(lease)
                raise
            break
        try:
            return await self.relay(req, conn_up, upstream, lease, t_arrive, t_send)
        finally:
            self.client.release(conn_up)
            self.pool.release(lease)

    async def relay(
        self,
        req: Request,
        conn_up: Connection,
        upstream: Response,
        lease: Lease,
        t_arrive: float,
        t_send: float,
    ) -> int:
        t_headers = time.monotonic()
        self._latency["cold" if lease.cold else "warm"].observe(t_headers - t_arrive)
        headers = downstream_raw(upstream.raw_headers)
        if self._server_timing:
            timing = server_timing(lease.queued, lease.cold, t_headers - t_send)
            headers.append((b"Server-Timing", timing.encode()))
        status = upstream.status
        if upstream.error is not None:
            # the body was malformed in the bytes that came with the head: nothing was
            # sent to the client yet, so it gets a clean 502
            self.metrics.upstream_errors.labels(upstream.error.kind).inc()
            log.warning("instance %s: %s", lease.slot.id, upstream.error)
            self.pool.release(lease, broken=upstream.error.strike)
            req.respond(502, "Bad Gateway: instance failed")
            return 502
        no_body = upstream.head_only or status in _NO_BODY_STATUS
        if no_body:
            length = upstream.content_length()
            if length is not None and upstream.head_only:
                headers.append((b"Content-Length", b"%d" % length))
            req.start_response(status, upstream.reason, headers, length=None, body=False)
            return status
        whole = upstream.body_buffered()
        if whole is not None:  # small response, all here already: one write
            req.start_response(status, upstream.reason, headers, length=len(whole), payload=whole)
            return status
        req.start_response(status, upstream.reason, headers, length=upstream.content_length())
        try:
            while chunk := await upstream.read():
                await req.write(chunk)
        except UpstreamError as exc:
            # The instance died mid-response: abort the client connection so it cannot
            # mistake a truncated body for a complete one.
            kind = exc.kind if isinstance(exc, ReadTimeout) else "truncated"
            self.metrics.upstream_errors.labels(kind).inc()
            log.warning("instance %s failed mid-response: %s", lease.slot.id, exc)
            self.pool.release(lease, broken=exc.strike)
            req.conn.abort()
            return 502
        except ConnectionError:
            conn_up.close()  # the client went away: drop the rest of the body
            raise
        req.end()
        return status
