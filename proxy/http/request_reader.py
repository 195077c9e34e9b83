"""Reading a client's requests from bytes, with no I/O (as h11 does): `feed(data)`
returns what the bytes completed, in order. llhttp (httptools) frames them; the bounds
and rules llhttp leaves to us are here: head bytes counted as they arrive (431), HTTP/0.9
request lines (400), at most max_pipelined requests queued (llhttp cannot be paused
mid-read: it is stopped), chunk-extension bytes and chunk counts per body (400); the
request rules of validate.py; bytes after a websocket head handed back untouched; the
body of an upgrade request we do not tunnel framed by its CL/TE (llhttp skips it).

Events, in the order the bytes completed them:
- a Request (made by `new_request`): its head is complete and valid;
- bytes: body data of the request of the last head;
- TOO_LARGE: that body passed max_body; reading goes on, its data is dropped (413);
- END: that request's body is complete;
- Failed: the request broke a rule (or llhttp refused the bytes); nothing follows;
- UpgradeHead: a websocket head ended; `rest` is what followed it; nothing follows;
- OVERFLOW: a request beyond max_pipelined began; the ones before it are queued, and
  nothing follows.

The connection (server.py) acts on them; this module never touches a socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import httptools

from forkproxy.proxy.http.limits import Limits
from forkproxy.proxy.http.request import ClientError, Request
from forkproxy.proxy.http.validate import tunnelled, validate

TOO_LARGE_TEXT = "Content Too Large: the body exceeds the limit"
_CHUNK_FRAMING = 24  # bytes of size line and CRLFs a chunk may take without extensions


class End:
    """The body of the request of the last head is complete (one instance: END)."""


class Overflow:
    """More requests than max_pipelined in one read (one instance: OVERFLOW)."""


class TooLarge:
    """The body passed max_body (one instance: TOO_LARGE): its request fails with 413,
    and the rest of it is framed, not kept."""


END: Final = End()
OVERFLOW: Final = Overflow()
TOO_LARGE: Final = TooLarge()


class Failed:
    """The request being read broke a rule: answer `status` (if nothing was sent) and stop
    reading. `malformed`: llhttp refused the bytes (a 400, counted as bad_request)."""

    __slots__ = ("detail", "malformed", "method", "req", "status", "text")

    def __init__(
        self,
        status: int,
        text: str,
        req: Request | None,
        method: str,
        *,
        malformed: bool = False,
        detail: str = "",
    ) -> None:
        self.status = status
        self.text = text
        self.req = req  # the request being read when it broke, if its head began
        self.method = method  # its method, as far as it was read ("" if not)
        self.malformed = malformed
        self.detail = detail  # llhttp's complaint, for the log


class UpgradeHead:
    """A websocket head ended; `rest` followed it (held until the instance answers)."""

    __slots__ = ("req", "rest")

    def __init__(self, req: Request, rest: bytes) -> None:
        self.req = req
        self.rest = rest


Event = Request | bytes | End | Failed | UpgradeHead | Overflow | TooLarge


class _Stop(Exception):
    """Stops llhttp where a rule broke (it cannot be paused): raised in a callback."""


class RequestReader:
    """Frames the requests in a client's bytes. `queued`: requests the connection holds
    (running or waiting), set by it before each feed; heads completed here add to it."""

    def __init__(
        self,
        limits: Limits,
        authority: bytes,
        new_request: Callable[[], Request],
        *,
        upgrades: bool,
    ) -> None:
        self.limits = limits
        self.authority = authority  # the Host of an HTTP/1.0 request without one
        self.upgrades = upgrades  # websocket handshakes are tunnelled
        self._new = new_request
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None  # the request whose head or body is being read
        self.queued = 0
        self.stopped = False  # a rule broke, an upgrade head or too many requests: no more
        self.in_head = False  # between message begin and headers complete
        self._events: list[Event] = []
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._head_raw = 0  # raw bytes of the head in progress, counted as they arrive
        self._framing = 0  # chunked body: bytes that were not body data (size lines, ext)
        self._chunks = 0
        self._received = 0  # body bytes of the request being read
        self._failed: Failed | None = None
        # an upgrade (h2c, ...) we ignore whose body llhttp skipped: framed by a fresh
        # parser, fed a head carrying only that request's framing
        self._continuation: Request | None = None
        self._synthetic = False
        self._upgrading: Request | None = None  # a websocket head llhttp just ended

    def feed(self, data: bytes) -> list[Event]:
        """What `data` completed. After a Failed, UpgradeHead or OVERFLOW, nothing more."""
        events = self._events = []
        if not self.stopped:
            self._feed(data)
        return events

    def method(self) -> str:
        """The method of the request being read, as far as it was read ("" if none)."""
        req = self.parsing
        if req is None:
            return ""
        if req.method:
            return req.method
        try:
            return self.parser.get_method().decode("latin-1")
        except httptools.HttpParserError:
            return ""

    def drop(self) -> None:
        """The connection gave up the request being read (answered after the queued ones)."""
        self.parsing = None

    def _fail(self, status: int, text: str, *, malformed: bool = False, detail: str = "") -> None:
        self.stopped = True
        self._events.append(
            Failed(status, text, self.parsing, self.method(), malformed=malformed, detail=detail)
        )

    def _feed(self, data: bytes) -> None:
        was_in_head = self.in_head
        body = self.parsing if self.parsing is not None and self.parsing.chunked else None
        before = self._received
        try:
            self.parser.feed_data(data)
        # one name per except clause: a mypyc build types a reused name by its first clause
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[int(upgrade.args[0]) :]
        except ClientError as broke:
            self._fail(broke.status, broke.text)
            return
        except httptools.HttpParserError as bad:
            self._parse_error(bad)
            return
        else:
            if self.in_head:
                self._head_in_progress(data, was_in_head)
            elif body is not None and body is self.parsing and not was_in_head:
                self._count_framing(len(data) - (self._received - before))
            return
        # outside the except clause: a callback's exception in what follows must be the
        # __context__ of llhttp's error, not this HttpParserUpgrade
        self._after_upgrade_head(rest)

    def _head_in_progress(self, data: bytes, was_in_head: bool) -> None:
        """Bounds on a head that did not end in this read. llhttp joins a header line
        across reads before calling us, so bytes are counted as they arrive (the read
        in which the head began is not: its offset is unknown, and it is one read)."""
        if was_in_head:
            self._head_raw += len(data)
            if self._head_raw > self.limits.max_header_bytes + self.limits.max_url + 1024:
                self._fail(431, "Request Header Fields Too Large")
                return
        version = self.parser.get_http_version()
        if version == "0.9" or (version == "0.0" and data.endswith(b"\n")):
            # a request line without a version (HTTP/0.9) ended: llhttp would wait
            # for headers 0.9 never has
            self._fail(400, "Bad Request: unsupported HTTP version")

    def _count_framing(self, framing: int) -> None:
        self._framing += framing
        if self._framing > self.limits.max_chunk_ext + _CHUNK_FRAMING * self._chunks:
            self._fail(400, "Bad Request: chunk extensions too large")

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        # a ClientError raised in our callbacks (414, 431, 413, 417) reaches us wrapped
        # in HttpParserCallbackError
        cause = exc.__context__
        if isinstance(cause, ClientError):
            self._fail(cause.status, cause.text)
        elif isinstance(cause, _Stop):
            pass  # the callback that raised it recorded why
        else:
            self._fail(400, "Bad Request", malformed=True, detail=str(exc))

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        queued = self.queued
        if (queued - 1 if queued else 0) >= self.limits.max_pipelined:
            # the requests queued so far are answered; the last says Connection: close
            # and the connection ends there (RFC 9112 9.3.2: the client retries the rest)
            self.stopped = True
            self.parsing = None
            self._events.append(OVERFLOW)
            raise _Stop
        self.parsing = self._new()
        self.in_head = True
        self._head_raw = 0
        self._header_bytes = 0
        self._header_count = 0
        self._url_len = 0
        self._framing = 0
        self._chunks = 0
        self._received = 0

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
        if self.in_head:
            self.parsing.headers.append((name, value))
        else:  # chunked trailers: counted against the header limits, then dropped
            self._framing -= size

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        req = self.parsing
        assert req is not None
        self.in_head = False
        req.method = self.parser.get_method().decode("ascii")
        req.version = self.parser.get_http_version()
        # keepalive_timeout = 0 disables keep-alive, as in nginx
        req.keep_alive = bool(self.parser.should_keep_alive()) and self.limits.keepalive_timeout > 0
        validate(req, self.authority)
        req.upgrade = self.upgrades and bool(self.parser.should_upgrade()) and tunnelled(req)
        limit = self.limits.max_body
        if req.content_length is not None and limit and req.content_length > limit:
            raise ClientError(413, TOO_LARGE_TEXT)
        self.queued += 1
        self._events.append(req)

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            before = self._received
            self._received += len(body)
            limit = self.limits.max_body
            if not limit or self._received <= limit:
                self._events.append(body)
            elif before <= limit:
                # a chunked body's length is known only as it comes: the bytes up to the
                # limit, then the 413, wherever the reads happened to end
                if before < limit:
                    self._events.append(body[: limit - before])
                self._events.append(TOO_LARGE)

    def on_chunk_header(self) -> None:
        self._chunks += 1
        limits = self.limits
        if (
            self.parsing is not None
            and self._chunks > limits.free_chunks
            and (self._chunks - limits.free_chunks) * limits.min_chunk_avg > self._received
        ):
            # raised inside llhttp's feed: parsing stops here, not after the rest of a
            # read full of 1-byte chunks
            raise ClientError(400, "Bad Request: too many chunks for the body's size")

    def on_message_complete(self) -> None:
        req = self.parsing
        if (
            req is not None
            and not req.upgrade
            and (req.chunked or req.content_length)
            and not self._synthetic
            and self._continuation is None
            and self.parser.should_upgrade()
        ):
            # llhttp skipped the body of an upgrade request: it is read next, framed by
            # the request's own CL/TE, never parsed as a request (HttpParserUpgrade follows)
            self._continuation = req
            return
        if req is not None:
            self._events.append(END)
            if req.upgrade:
                self._upgrading = req  # llhttp raises HttpParserUpgrade next
        self.parsing = None
        self._continuation = None

    def _after_upgrade_head(self, rest: bytes) -> None:
        """llhttp stopped after a head with Upgrade. Ours to tunnel: hand back what
        follows, untouched. Anything else: go on parsing HTTP with a fresh parser (first
        the skipped body of that request, if it has one)."""
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
            # the handshake is parsed before the instance says 101
            self.stopped = True
            self._events.append(UpgradeHead(self._upgrading, rest))
            self._upgrading = None
            return
        if rest:
            self._feed(rest)
