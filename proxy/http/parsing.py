"""Parsing a client's requests with llhttp (httptools), with the bounds and rules llhttp
leaves to us: head bytes counted as they arrive (431), HTTP/0.9 request lines (400), at
most max_pipelined requests queued (llhttp cannot be paused mid-read: it is stopped),
chunk-extension bytes per body (400); bytes after a websocket head held until the 101;
the body of an upgrade request we do not tunnel framed by its CL/TE (llhttp skips it).

A mixin of HttpConnection (server.py), which runs what is parsed and answers."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from proxy.http.flow import HELD, PIPELINE, Flow
from proxy.http.limits import Limits
from proxy.http.request import BUDGET_SPENT, ClientError, Request
from proxy.http.validate import tunnelled, validate

if TYPE_CHECKING:
    from proxy.http.server import HttpServer

log = logging.getLogger("forkproxy.http")

_MAX_HELD = 64 * 1024  # bytes after an upgrade head kept until the 101 (then reading pauses)
_CHUNK_FRAMING = 24  # bytes of size line and CRLFs a chunk may take without extensions


class _PipelineFull(Exception):
    """Stops llhttp at a request beyond max_pipelined (it cannot be paused)."""


class RequestParsing:
    server: HttpServer
    limits: Limits
    flow: Flow
    peer: str
    active: Request | None
    pipeline: collections.deque[Request]
    closing: bool
    _broken: ClientError | None
    _got_bytes: bool
    tunnel: Callable[[bytes], None] | None

    def _init_parsing(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._in_head = False  # between message begin and headers complete
        self._head_raw = 0  # raw bytes of the head in progress, counted as they arrive
        self._framing = 0  # chunked body: bytes that were not body data (size lines, ext)
        self._chunks = 0
        self._overflow = False  # more pipelined requests than max_pipelined: parser stopped
        # an upgrade (h2c, ...) we ignore whose body llhttp skipped: framed by a fresh
        # parser, fed a head carrying only that request's framing
        self._continuation: Request | None = None
        self._synthetic = False
        self._upgrading: Request | None = None  # a websocket head llhttp just ended
        # bytes after a websocket head, held until the instance answers 101
        self.held: bytearray | None = None

    # implemented by HttpConnection
    def fail(self, status: int, text: str) -> None:
        raise NotImplementedError

    def _run(self, req: Request) -> None:
        raise NotImplementedError

    def _request(self) -> Request:
        raise NotImplementedError

    def _arm(self, delay: float, *, idle: bool) -> None:
        raise NotImplementedError

    def _disarm(self) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel(data)
            return
        if self.held is not None:
            self.held += data
            if len(self.held) > _MAX_HELD:
                self.flow.pause(HELD)
            return
        if self.closing or self._broken is not None or self._overflow:
            return
        if not self._got_bytes and self.parsing is None:
            self._got_bytes = True
            self._arm(self.limits.header_timeout, idle=False)
        was_in_head = self._in_head
        body = self.parsing if self.parsing is not None and self.parsing.chunked else None
        before = body.body.received if body is not None else 0
        try:
            self.parser.feed_data(data)
        # one name per except clause: a mypyc build types a reused name by its first clause
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade_head(data[int(upgrade.args[0]) :])
            return
        except ClientError as broke:
            self.fail(broke.status, broke.text)
            return
        except httptools.HttpParserError as bad:
            self._parse_error(bad)
            return
        if self._in_head:
            self._head_in_progress(data, was_in_head)
        elif body is not None and body is self.parsing and not was_in_head:
            self._count_framing(len(data) - (body.body.received - before))

    def _head_in_progress(self, data: bytes, was_in_head: bool) -> None:
        """Bounds on a head that did not end in this read. llhttp joins a header line
        across reads before calling us, so bytes are counted as they arrive (the read
        in which the head began is not: its offset is unknown, and it is one read)."""
        if was_in_head:
            self._head_raw += len(data)
            if self._head_raw > self.limits.max_header_bytes + self.limits.max_url + 1024:
                self.fail(431, "Request Header Fields Too Large")
                return
        version = self.parser.get_http_version()
        if version == "0.9" or (version == "0.0" and data.endswith(b"\n")):
            # a request line without a version (HTTP/0.9) ended: llhttp would wait
            # for headers 0.9 never has
            self.fail(400, "Bad Request: unsupported HTTP version")

    def _count_framing(self, framing: int) -> None:
        self._framing += framing
        if self._framing > self.limits.max_chunk_ext + _CHUNK_FRAMING * self._chunks:
            self.fail(400, "Bad Request: chunk extensions too large")

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        # a ClientError raised in our callbacks (414, 431, 413, 417) reaches us wrapped
        # in HttpParserCallbackError
        cause = exc.__context__
        if isinstance(cause, ClientError):
            self.fail(cause.status, cause.text)
            return
        if isinstance(cause, _PipelineFull):
            # the requests queued so far are answered; the last says Connection: close
            # and the connection ends there (RFC 9112 9.3.2: the client retries the rest)
            self._overflow = True
            self.parsing = None
            self.pipeline[-1].keep_alive = False
            return
        self.server.rejected("bad_request")
        log.debug("bad request from %s: %s", self.peer, exc)
        if self.parsing is not None and self.active is self.parsing:
            self.parsing.body.fail(ClientError(400, "Bad Request: malformed body"))
            self.closing = True
        else:
            self.fail(400, "Bad Request")

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        if len(self.pipeline) >= self.limits.max_pipelined:
            raise _PipelineFull
        self.parsing = self._request()
        self._in_head = True
        self._head_raw = 0
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._framing = 0
        self._chunks = 0
        if not self._got_bytes:
            self._got_bytes = True
            self._arm(self.limits.header_timeout, idle=False)

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        assert self.parsing is not None
        self._url_len += len(url)
        if self._url_len > self.limits.max_url:
            raise ClientError(414, "URI Too Long")
        self.parsing.path += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._synthetic:
            return
        assert self.parsing is not None
        self._header_count += 1
        size = len(name) + len(value) + 4
        self._header_bytes += size
        if self._header_count > self.limits.max_headers:
            raise ClientError(431, "Request Header Fields Too Large: too many headers")
        if self._header_bytes > self.limits.max_header_bytes:
            raise ClientError(431, "Request Header Fields Too Large")
        if self._in_head:
            self.parsing.headers.append((name, value))
        else:  # chunked trailers: counted against the header limits, then dropped
            self._framing -= size

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        req = self.parsing
        assert req is not None
        self._got_bytes = False
        self._in_head = False
        self._disarm()
        req.method = self.parser.get_method().decode("ascii")
        req.version = self.parser.get_http_version()
        # keepalive_timeout = 0 disables keep-alive, as in nginx
        req.keep_alive = bool(self.parser.should_keep_alive()) and self.limits.keepalive_timeout > 0
        validate(req, self.server.authority)
        req.upgrade = (
            self.server.upgrade is not None
            and bool(self.parser.should_upgrade())
            and tunnelled(req)
        )
        limit = self.limits.max_body
        if req.content_length is not None and limit and req.content_length > limit:
            raise ClientError(413, "Content Too Large: the body exceeds the limit")
        if req.content_length and not req.body.charge(
            min(req.content_length, self.limits.body_buffer)
        ):
            raise BUDGET_SPENT
        # the Body made with the Request has seen nothing yet; its clock (min-rate) starts now
        req.body.started = time.monotonic()
        if not req.chunked and not req.content_length:
            req.body.complete = True
        if self.active is None:
            self._run(req)
        else:
            self.pipeline.append(req)
            self.flow.pause(PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body.feed(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1
        req = self.parsing
        limits = self.limits
        if (
            req is not None
            and self._chunks > limits.free_chunks
            and (self._chunks - limits.free_chunks) * limits.min_chunk_avg > req.body.received
        ):
            # raised inside llhttp's feed: parsing stops here, not after the rest of a
            # read full of 1-byte chunks
            raise ClientError(400, "Bad Request: too many chunks for the body's size")

    def on_message_complete(self) -> None:
        req = self.parsing
        if (
            req is not None
            and not req.upgrade
            and not req.body.complete
            and not self._synthetic
            and self._continuation is None
            and self.parser.should_upgrade()
        ):
            # llhttp skipped the body of an upgrade request: it is read next, framed by
            # the request's own CL/TE, never parsed as a request (HttpParserUpgrade follows)
            self._continuation = req
            return
        if req is not None:
            req.body.finish()
            if req.upgrade:
                self._upgrading = req  # llhttp raises HttpParserUpgrade next
        self.parsing = None
        self._continuation = None

    def _after_upgrade_head(self, rest: bytes) -> None:
        """llhttp stopped after a head with Upgrade. Ours to tunnel: hold what follows
        until the instance answers. Anything else: go on parsing HTTP with a fresh parser
        (first the skipped body of that request, if it has one)."""
        req = self._continuation
        self.parser = httptools.HttpRequestParser(self)
        if req is not None:
            framing = (
                b"Transfer-Encoding: chunked"
                if req.chunked
                else b"Content-Length: %d" % (req.content_length or 0)
            )
            self._synthetic = True
            try:
                self.parser.feed_data(b"PUT / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n")
            finally:
                self._synthetic = False
            self.parsing = req
        elif self._upgrading is not None:
            # whether it runs now or waits behind a pipelined request, nothing after
            # the handshake is parsed or forwarded before the instance says 101
            self._upgrading = None
            self.held = bytearray(rest)
            self._disarm()
            return
        if rest:
            self.data_received(rest)

    def take_held(self) -> bytes:
        """The 101 came: bytes held since the upgrade head, and the tunnel takes over."""
        data = bytes(self.held or b"")
        self.held = None
        self.flow.resume(HELD)
        return data
