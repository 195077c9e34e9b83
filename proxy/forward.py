"""The data path: hold the request for a slot, forward it with both bodies streamed,
re-frame the response, tunnel websockets. Errors become short fixed 5xx texts."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.config import Config
from proxy.headers import downstream_response_headers, server_timing, upstream_request_headers
from proxy.metrics import Metrics
from proxy.pool import Lease, Pool, PoolError

log = logging.getLogger("forkproxy.forward")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})


def error_response(status: int, text: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(status=status, text=text + "\n", headers=headers)


class _ConnectFailed(Exception):
    pass


class Forwarder:
    def __init__(self, cfg: Config, pool: Pool, metrics: Metrics) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15.0),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.cfg.server.upstream_connect_timeout
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        resp: web.StreamResponse
        try:
            if _is_websocket(request):
                resp = await self._websocket(request)
            else:
                resp = await self._forward(request)
        except asyncio.CancelledError:
            self.metrics.requests.labels("499").inc()
            raise
        self.metrics.requests.labels(str(resp.status)).inc()
        return resp

    async def _acquire(self, request: web.BaseRequest) -> Lease | web.Response:
        deadline = self.pool.clock() + self.pool.cfg.hold_timeout
        try:
            return await self.pool.acquire(deadline)
        except PoolError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            if exc.status == 504:
                return error_response(504, "Gateway Timeout: no instance became free in time")
            text = {
                "queue_full": "Service Unavailable: queue full",
                "start_failed": "Service Unavailable: no instance could be started",
                "shutting_down": "Service Unavailable: shutting down",
            }.get(exc.reason, "Service Unavailable")
            return error_response(503, text, retry_after=1)

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        t_arrive = time.monotonic()
        method = request.method
        headers = upstream_request_headers(
            request.headers, peer=request.remote or "", scheme=request.scheme, host=request.host
        )
        body: aiohttp.StreamReader | None = None
        if request.body_exists:
            body = request.content
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        elif method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        attempts = 0
        while True:
            got = await self._acquire(request)
            if isinstance(got, web.Response):
                return got
            lease = got
            url = URL(lease.instance.endpoint.url + request.raw_path, encoded=True)
            t_send = time.monotonic()
            try:
                upstream = await self._send(method, url, headers, body)
            except _ConnectFailed as exc:
                self.pool.release(lease, broken=True)
                self.metrics.upstream_errors.labels("connect").inc()
                if attempts < self.cfg.server.retry_attempts:
                    attempts += 1
                    self.metrics.retries.inc()
                    log.info("retrying on another instance after connect failure: %s", exc)
                    continue
                return error_response(502, "Bad Gateway: instance unreachable")
            except TimeoutError:
                self.pool.release(lease)
                self.metrics.upstream_errors.labels("timeout").inc()
                return error_response(504, "Gateway Timeout: instance did not answer in time")
            except (aiohttp.ClientError, OSError) as exc:
                self.pool.release(lease, broken=True)
                self.metrics.upstream_errors.labels(_kind(exc)).inc()
                log.warning("upstream %s failed: %r", lease.slot.id, exc)
                return error_response(502, "Bad Gateway: instance failed")
            break
        try:
            return await self._relay(request, upstream, lease, t_arrive, t_send)
        finally:
            upstream.release()
            self.pool.release(lease)

    async def _send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str] | object,
        body: aiohttp.StreamReader | None,
    ) -> aiohttp.ClientResponse:
        assert self.session is not None
        try:
            async with asyncio.timeout(self.cfg.server.upstream_header_timeout):
                return await self.session.request(
                    method,
                    url,
                    headers=headers,  # type: ignore[arg-type]
                    data=body,
                    allow_redirects=False,
                    compress=None,
                )
        except aiohttp.ClientConnectorError as exc:
            raise _ConnectFailed(str(exc)) from exc

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        lease: Lease,
        t_arrive: float,
        t_send: float,
    ) -> web.StreamResponse:
        t_headers = time.monotonic()
        self.metrics.latency.labels("cold" if lease.cold else "warm").observe(t_headers - t_arrive)
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        resp.headers.extend(downstream_response_headers(upstream.headers))
        if self.cfg.server.server_timing:
            resp.headers.add(
                "Server-Timing", server_timing(lease.queued, lease.cold, t_headers - t_send)
            )
        no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if upstream.content_length is not None and not no_body:
            resp.content_length = upstream.content_length
        elif request.method == "HEAD" and "Content-Length" in upstream.headers:
            resp.headers["Content-Length"] = upstream.headers["Content-Length"]
        await resp.prepare(request)
        if no_body:
            await resp.write_eof()
            return resp
        try:
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, OSError) as exc:
            # The instance died mid-response: abort the client connection so it cannot
            # mistake a truncated body for a complete one.
            self.metrics.upstream_errors.labels("truncated").inc()
            log.warning("instance %s failed mid-response: %r", lease.slot.id, exc)
            self.pool.release(lease, broken=True)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError() from exc
        await resp.write_eof()
        return resp

    async def _websocket(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.session is not None
        got = await self._acquire(request)
        if isinstance(got, web.Response):
            return got
        lease = got
        try:
            protocols = tuple(
                p.strip()
                for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                if p.strip()
            )
            headers = upstream_request_headers(
                request.headers,
                peer=request.remote or "",
                scheme=request.scheme,
                host=request.host,
                websocket=True,
            )
            url = URL(lease.instance.endpoint.url + request.raw_path, encoded=True)
            try:
                upstream = await self.session.ws_connect(
                    url, headers=headers, protocols=protocols, autoping=False, max_msg_size=0
                )
            except (aiohttp.ClientError, OSError) as exc:
                self.metrics.upstream_errors.labels("websocket").inc()
                log.warning("websocket upstream %s failed: %r", lease.slot.id, exc)
                return error_response(502, "Bad Gateway: instance refused the websocket")
            client = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (),
                autoping=False,
                max_msg_size=0,
            )
            await client.prepare(request)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_pump(upstream, client))
                tg.create_task(_pump(client, upstream))
            return client
        finally:
            self.pool.release(lease)


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in src:
        if dst.closed:
            break
        if msg.type is aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is aiohttp.WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type is aiohttp.WSMsgType.PONG:
            await dst.pong(msg.data)
    if not dst.closed:
        await dst.close(code=src.close_code or 1000)


def _is_websocket(request: web.BaseRequest) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def _kind(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "bad_response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    return "other"
