"""One response from an instance, and the llhttp callbacks for its bytes only: each
response has its own parser, so a byte after its end (a HEAD answer, 204, 304, a
Content-Length or chunked body) is stray and breaks the connection (upstream.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.http.chunks import ChunkQueue
from proxy.http.errors import BadResponse, ReadTimeout, UpstreamError

if TYPE_CHECKING:
    from proxy.http.upstream import Connection

MAX_HEAD = 64 * 1024  # response header bytes from an instance; more is a bad response
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

RawHeaders = list[tuple[bytes, bytes]]
InfoHook = Callable[[int, bytes, RawHeaders], None]


class Stray(Exception):
    """A byte after the end of the response: the connection is out of step."""


class Response:
    """One response being received, and the llhttp callbacks for its bytes only.
    Read the body with `read()` until b""."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_info",
        "complete",
        "error",
        "got_bytes",
        "head_bytes",
        "head_only",
        "headers_done",
        "keep_alive",
        "on_info",
        "raw_head",
        "raw_headers",
        "reason",
        "status",
        "trailing",
        "until_close",
        "upgrade",
        "upgraded",
    )

    def __init__(
        self, conn: Connection, head_only: bool, upgrade: bool, on_info: InfoHook | None
    ) -> None:
        self._conn = conn
        self._chunks = ChunkQueue(conn.flow)
        self.status = 0
        self.reason = b""
        self.raw_headers: RawHeaders = []
        self.keep_alive = False
        self.headers_done: asyncio.Future[None] = conn.loop.create_future()
        self.complete = False
        self.error: UpstreamError | None = None
        self.head_only = head_only
        self.upgrade = upgrade  # the request asked for a websocket: a 101 is expected
        self.upgraded = False  # the instance answered 101: raw bytes from here on
        self.trailing = b""  # bytes after the 101 head, for the tunnel
        self.on_info = on_info  # 1xx other than 100/101 (103 Early Hints)
        self.got_bytes = False
        self.head_bytes = 0
        self.raw_head = 0
        self._info = False
        self.until_close = False  # no Content-Length, not chunked: the body ends at EOF

    def content_length(self) -> int | None:
        for name, value in self.raw_headers:
            # the length test first: most names are not 14 bytes, and need no lower()
            if len(name) == 14 and name.lower() == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def _finish(self) -> None:
        self.complete = True
        self._chunks.wake()

    def _fail(self, err: UpstreamError) -> None:
        if self.complete:
            return
        self.error = err
        if not self.headers_done.done():
            self.headers_done.set_exception(err)
            # whoever reads the response sees self.error; a future nobody awaited (the
            # send itself failed) must not log "exception was never retrieved"
            self.headers_done.exception()
        self._chunks.wake()

    def body_buffered(self) -> bytes | None:
        """The whole body if it already arrived with the headers (the common small case)."""
        if self.complete and self.error is None:
            return self._chunks.take_all()
        return None

    async def read(self) -> bytes:
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            try:
                async with asyncio.timeout(self._conn.stall):
                    await self._chunks.wait()
            except TimeoutError:
                raise ReadTimeout("instance stopped sending the response", sent=True) from None
        return self._chunks.pop()

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise Stray

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD:
            raise BadResponse("response head too large", sent=True)
        if not self.headers_done.done():  # after the head: chunked trailers, dropped
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._conn.parser
        code = parser.get_status_code()
        if code == 101 and self.upgrade:
            self.status = code
            self.upgraded = True  # llhttp pauses after this message: HttpParserUpgrade
            self.headers_done.set_result(None)
            return
        if not 100 <= code <= 599:  # RFC 9110 15: three digits, 1xx to 5xx
            raise BadResponse(f"status code {code} out of range", sent=True)
        if code < 200:
            if code == 101:
                raise BadResponse("101 to a request that asked for no upgrade", sent=True)
            if any(len(n) in (14, 17) and n.lower() in _FRAMING for n, _ in self.raw_headers):
                # a 1xx has no content (RFC 9110 15.2); llhttp would read one by its
                # framing and append it to the final response's body
                raise BadResponse(f"{code} response with body framing", sent=True)
            # bytes may follow a 1xx that no later parse can place: reuse only at a
            # proven boundary
            self._conn.no_reuse = True
            # 100 Continue is the proxy's own business (Expect is not forwarded); other
            # 1xx (103 Early Hints) go to the client if it can take them
            if code != 100 and self.on_info is not None:
                self.on_info(code, self.reason, self.raw_headers)
            self._info = True
            self.raw_headers = []
            self.reason = b""
            return
        self.status = code
        self.keep_alive = bool(parser.should_keep_alive())
        if self.head_only or code in (204, 304):
            # Where the body ends is known here only by rule: a server that breaks it
            # (waitress sends an app's body to HEAD) may still be writing, and the late
            # bytes would become the next request's answer. Such a connection is never
            # pooled: a fresh one costs less than that guess.
            self._conn.no_reuse = True
        if self.content_length() is None and code not in (204, 304) and not self.head_only:
            self.until_close = not any(
                n.lower() == b"transfer-encoding" and b"chunked" in v.lower()
                for n, v in self.raw_headers
            )
        self.headers_done.set_result(None)
        if self.head_only:
            # a HEAD answer has no body whatever its framing headers say: the response
            # ends here, and any byte after it is stray (llhttp, not told it was HEAD,
            # would take Content-Length bytes as a body)
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise Stray
        self._chunks.push(body)

    def on_message_complete(self) -> None:
        if self._info:
            self._info = False
        elif self.upgraded:
            return  # the connection is the tunnel's now
        elif not self.complete:
            self._finish()
        elif not self.head_only:
            raise Stray
