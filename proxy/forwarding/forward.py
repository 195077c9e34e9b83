"""The data path: hold the request for a slot, forward it with both bodies streamed,
re-frame the response, retry what is safe to retry. Errors are short fixed texts."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prometheus_client import Counter

from forkproxy.proxy.config import Config
from forkproxy.proxy.forwarding.failures import INSTANCE_FAILED, upstream_failure
from forkproxy.proxy.http.headers import HeaderRules, downstream_raw, server_timing, upstream_head
from forkproxy.proxy.http.server import ClientError, Request
from forkproxy.proxy.http.upstream import (
    Connection,
    ReadTimeout,
    Response,
    UpstreamClient,
    UpstreamError,
)
from forkproxy.proxy.metrics import Metrics
from forkproxy.proxy.pool import Lease, LeaseScope, Pool, PoolError

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


def upstream_client(cfg: Config, pool: Pool) -> UpstreamClient:
    """The one client to the pool's instances, shared by forwarding and tunnels."""
    # an instance that stops reading a request body for upstream_header_timeout is
    # as stuck as one that never answers (nginx: proxy_send_timeout)
    client = UpstreamClient(
        cfg.server.upstream_connect_timeout,
        cfg.server.upstream_header_timeout,
        max_idle=lambda: max(64, pool.cfg.max_concurrency),
    )
    pool.gone_hooks.append(lambda inst: client.forget(inst.endpoint))
    return client


class Forwarder:
    def __init__(self, cfg: Config, pool: Pool, metrics: Metrics, client: UpstreamClient) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        self.client = client
        self.trusted = cfg.server.trusted_proxies
        self.header_rules = HeaderRules.build(
            cfg.server.drop_client_headers, underscores=cfg.server.underscores_in_headers
        )
        self._header_timeout = cfg.server.upstream_header_timeout
        self._server_timing = cfg.server.server_timing
        self._body_buffer = cfg.server.limits.body_buffer
        self._body_spool = cfg.server.limits.body_spool
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

    def lease(self, req: Request) -> RequestLease:
        """`async with fwd.lease(req) as lease:` see RequestLease."""
        return RequestLease(self, req)

    def refuse(self, req: Request, exc: PoolError) -> int:
        """Answer a request no slot came for: 503, or 504 when its hold deadline passed."""
        self.metrics.rejected.labels(exc.reason).inc()
        if req.expect_continue and not req.body.complete:
            req.keep_alive = False  # the body never came: the connection can't be reused
        if exc.status == 504:
            req.respond(504, "Gateway Timeout: no instance became free in time")
            return 504
        req.respond(503, _POOL_TEXT.get(exc.reason, "Service Unavailable"))
        return 503

    async def _read_ahead(self, req: Request) -> None:
        """Read the body before an instance slot is taken: a client that dribbles its
        body holds a connection, never a slot. Up to body_buffer bytes in memory; a body
        up to body_spool (declared, or chunked and ending within it) whole, the rest of
        it on disk; a larger one its first body_buffer bytes, then it streams. Under
        Expect: 100-continue the proxy answers 100 itself unless the declared body is
        larger than body_buffer: that client asked for the instance's verdict before it
        sends, so its 100 waits for the instance (which may refuse the body first) and
        its body streams, not spooled."""
        buffer = self._body_buffer
        length = req.content_length
        spool = self._body_spool if length is None or length <= self._body_spool else 0
        if req.expect_continue:
            if length is not None and length > buffer:
                conn = req.conn
                req.body.on_first_read = lambda: conn.write(_CONTINUE)
                return
            req.conn.write(_CONTINUE)
        if buffer:
            await req.body.prefetch(buffer, spool)

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
        """hold (read ahead) -> lease -> send, retrying what is safe -> relay; the lease
        is released as its scope ends, once, however the attempt ends."""
        t_arrive = time.monotonic()
        framing, body = _framing(req)
        if body is not None and not req.body.complete:
            await self._read_ahead(req)
        head = self.head_for(req, framing)
        tries = _Tries()
        while True:
            status = await self._attempt(req, head, body, tries, t_arrive)
            if status is not None:
                return status

    async def _attempt(
        self,
        req: Request,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        tries: _Tries,
        t_arrive: float,
    ) -> int | None:
        """One lease: the status answered, or None to try again on a new one (this one
        went back as its scope ended)."""
        async with self.lease(req) as lease:
            if isinstance(lease, int):
                return lease
            if req.body.error is not None:  # broke while held: send the instance nothing
                raise req.body.error
            req.body.slot_taken()
            req.lease = lease  # the access log names the instance
            t_send = time.monotonic()
            try:
                conn_up, upstream = await self._send(req, lease, head, body)
            except (UpstreamError, TimeoutError) as exc:
                return self._failed(req, lease, exc, body, tries)
            try:
                return await self.relay(req, conn_up, upstream, lease, t_arrive, t_send)
            finally:
                self.client.release(conn_up)

    async def _send(
        self, req: Request, lease: Lease, head: bytes, body: AsyncIterator[bytes] | None
    ) -> tuple[Connection, Response]:
        """The request sent and the response head in; the connection closed if not."""
        conn_up: Connection | None = None
        try:
            conn_up, upstream = await self.client.send(
                lease.instance.endpoint,
                head,
                body,
                chunked=req.chunked,
                head_only=req.method == "HEAD",
                on_info=req.informational,
            )
            conn_up.expect_head(self._header_timeout)
            await upstream.headers_done
        except BaseException:
            if conn_up is not None:
                conn_up.close()
            raise
        return conn_up, upstream

    def _failed(
        self,
        req: Request,
        lease: Lease,
        exc: UpstreamError | TimeoutError,
        body: AsyncIterator[bytes] | None,
        tries: _Tries,
    ) -> int | None:
        """The status answered for a send that failed, or None to try again."""
        failure = upstream_failure(exc)
        self.metrics.upstream_errors.labels(failure.kind).inc()
        if isinstance(exc, UpstreamError):
            # the instance is suspect unless a pooled keep-alive connection merely went
            # stale under us, or it answered (badly): a malformed answer is the app's
            # answer to one request, not a sign the instance is gone
            if exc.strike and not exc.stale:
                lease.mark_broken()
            if self._retry(req, lease, exc, body, tries):
                return None
            log.warning("upstream %s failed: %s", lease.slot.id, exc)
        req.keep_alive = req.keep_alive and req.body.complete
        req.respond(failure.status, failure.text)
        return failure.status

    def _retry(
        self,
        req: Request,
        lease: Lease,
        exc: UpstreamError,
        body: AsyncIterator[bytes] | None,
        tries: _Tries,
    ) -> bool:
        # Nothing reached the instance: any method. Else only an idempotent request
        # without a body (a streamed body cannot be replayed) whose instance closed
        # without a byte of response (nginx's proxy_next_upstream error).
        retry = not exc.sent or (exc.silent and body is None and req.method in IDEMPOTENT)
        if retry and exc.stale and tries.stale < _MAX_STALE:
            # not the instance's fault: its other pooled connections are likely
            # stale too (it restarted or died); try a fresh one, free of charge
            self.client.forget(lease.instance.endpoint)
            tries.stale += 1
            self.metrics.retries.inc()
            return True
        if retry and tries.attempts < self.cfg.server.retry_attempts:
            tries.attempts += 1
            self.metrics.retries.inc()
            log.info("retrying on another instance after %s: %s", exc.kind, exc)
            return True
        return False

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
            timing = server_timing(lease.queued, lease.cold, t_headers - t_send, lease.first)
            headers.append((b"Server-Timing", timing.encode()))
        status = upstream.status
        if upstream.error is not None:
            # the body was malformed in the bytes that came with the head: nothing was
            # sent to the client yet, so it gets a clean 502
            self.metrics.upstream_errors.labels(upstream.error.kind).inc()
            log.warning("instance %s: %s", lease.slot.id, upstream.error)
            if upstream.error.strike:
                lease.mark_broken()
            req.respond(502, INSTANCE_FAILED)
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
            if exc.strike:
                lease.mark_broken()
            req.conn.abort()
            return 502
        except ConnectionError:
            conn_up.close()  # the client went away: drop the rest of the body
            raise
        req.end()
        return status


def _framing(req: Request) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The framing header the instance gets and the body to stream, if any."""
    if req.content_length is not None:
        framing = b"Content-Length: %d\r\n" % req.content_length
        return framing, req.body if req.content_length else None
    if req.chunked:  # re-chunked by us, extensions and trailers dropped
        return b"Transfer-Encoding: chunked\r\n", req.body
    return b"", None


@dataclass
class _Tries:
    attempts: int = 0  # on another instance, up to retry_attempts
    stale: int = 0  # on a fresh connection after a stale pooled one, up to _MAX_STALE


class RequestLease:
    """pool.lease for a request: the hold deadline is hold_timeout from now, a client
    that leaves while held cancels the wait (server.py), and a refusal is answered here:
    the scope then gives the status (503/504) instead of a lease. The slot is released
    as the scope ends (by the pool's scope: the one place that releases)."""

    def __init__(self, fwd: Forwarder, req: Request) -> None:
        self._fwd = fwd
        self._req = req
        self._scope: LeaseScope | None = None

    async def __aenter__(self) -> Lease | int:
        pool, req = self._fwd.pool, self._req
        scope = pool.lease(pool.clock() + pool.cfg.hold_timeout)
        req.waiting = True
        try:
            lease = await scope.__aenter__()
        except PoolError as exc:
            return self._fwd.refuse(req, exc)
        finally:
            req.waiting = False
        self._scope = scope
        return lease

    async def __aexit__(self, *exc_info: object) -> None:
        if self._scope is not None:
            await self._scope.__aexit__(*exc_info)
