"""Reading an instance's responses from bytes, with no I/O: `feed(data)` returns what
the bytes completed, in order. Each response gets its own llhttp parser (`start`), so
a byte after its end (a HEAD answer, 204, 304, a Content-Length or chunked body) is
stray: the connection is out of step (h11's rule). Also here: the status range, 1xx
without content (RFC 9110 15.2), a 101 only to an upgrade, the head's size bound.

Events, in the order the bytes completed them:
- HEAD: the final head is complete: `status`, `reason`, `raw_headers`, `keep_alive`,
  `until_close`, `upgraded` (a 101 to an upgrade: raw bytes from here on);
- Info: a 1xx other than 100 and 101 (103 Early Hints), for the client;
- bytes: body data;
- END: the response is complete;
- Trailing: after a 101 head, what followed it (the new protocol's); nothing follows;
- Broken: the response is bad (`error`); nothing follows;
- STRAY: a byte after the response's end; the response stands, the connection does not.

The instance-facing connection (upstream.py) acts on them; no socket is touched here."""

from __future__ import annotations

from typing import Final

import httptools

from forkproxy.proxy.http.errors import BadResponse

MAX_HEAD = 64 * 1024  # response header bytes from an instance; more is a bad response
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

RawHeaders = list[tuple[bytes, bytes]]


class Head:
    """The final response head is complete (one instance: HEAD; fields on the reader)."""


class End:
    """The response is complete (one instance: END)."""


class StrayBytes:
    """A byte after the end of the response (one instance: STRAY)."""


HEAD: Final = Head()
END: Final = End()
STRAY: Final = StrayBytes()


class Info:
    """A 1xx response other than 100 and 101 (103 Early Hints)."""

    __slots__ = ("headers", "reason", "status")

    def __init__(self, status: int, reason: bytes, headers: RawHeaders) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers


class Trailing:
    """What the instance sent after its 101 head."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Broken:
    """The response is bad; `error` says why."""

    __slots__ = ("error",)

    def __init__(self, error: BadResponse) -> None:
        self.error = error


Event = Head | bytes | End | Info | Trailing | Broken | StrayBytes


class _Stray(Exception):
    """Stops llhttp at a byte after the end of the response."""


class ResponseReader:
    """Frames one response at a time; `start` before each. One per connection: the
    parser refers back to it, and a reader per response would make that cycle garbage
    only the cyclic GC frees, per request."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = False
        self.upgrade = False
        self.stopped = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.raw_headers: RawHeaders = []
        self.keep_alive = False
        self.until_close = False  # no Content-Length, not chunked: the body ends at EOF
        self.upgraded = False
        self.head_done = False
        self.complete = False
        # never reuse the connection after this response: its end is known only by rule
        self.no_reuse = False
        self._head_bytes = 0
        self._raw_head = 0
        self._info = False
        self._events: list[Event] = []

    def start(self, head_only: bool, upgrade: bool) -> None:
        """A response to the request just sent: to HEAD (`head_only`), or to a websocket
        handshake (`upgrade`: a 101 is expected)."""
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.upgrade = upgrade
        self.stopped = False
        self._reset()

    def feed(self, data: bytes) -> list[Event]:
        events = self._events = []
        if self.stopped:
            return events
        try:
            self.parser.feed_data(data)
        # one name per except clause: a mypyc build types a reused name by its first clause
        except httptools.HttpParserUpgrade as upgrade:
            self.stopped = True
            if self.upgraded:
                # the 101 head ended; what follows is the new protocol's, handed over raw
                events.append(Trailing(data[int(upgrade.args[0]) :]))
            else:
                events.append(Broken(BadResponse("unexpected upgrade", sent=True)))
            return events
        except httptools.HttpParserError as exc:
            self.stopped = True
            cause = exc.__context__
            if self.complete or isinstance(cause, _Stray):
                # the response itself was whole; what came after it was not ours to read
                events.append(STRAY)
                return events
            err = cause if isinstance(cause, BadResponse) else None
            events.append(Broken(err or BadResponse(f"malformed response: {exc}", sent=True)))
            return events
        if not self.head_done:
            # llhttp joins a header line across reads before we see it: count raw bytes
            # so an endless line is cut at the limit, not at the header timeout
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD:
                self.stopped = True
                events.append(Broken(BadResponse("response head too large", sent=True)))
        return events

    def content_length(self) -> int | None:
        return content_length(self.raw_headers)

    # -- llhttp callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Stray

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD:
            raise BadResponse("response head too large", sent=True)
        if not self.head_done:  # after the head: chunked trailers, dropped
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        code = parser.get_status_code()
        if code == 101 and self.upgrade:
            self.status = code
            self.upgraded = True  # llhttp pauses after this message: HttpParserUpgrade
            self.head_done = True
            self._events.append(HEAD)
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
            self.no_reuse = True
            # 100 Continue is the proxy's own business (Expect is not forwarded); other
            # 1xx (103 Early Hints) go to the client if it can take them
            if code != 100:
                self._events.append(Info(code, self.reason, self.raw_headers))
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
            self.no_reuse = True
        if self.content_length() is None and code not in (204, 304) and not self.head_only:
            self.until_close = not any(
                n.lower() == b"transfer-encoding" and b"chunked" in v.lower()
                for n, v in self.raw_headers
            )
        self.head_done = True
        self._events.append(HEAD)
        if self.head_only:
            # a HEAD answer has no body whatever its framing headers say: the response
            # ends here, and any byte after it is stray (llhttp, not told it was HEAD,
            # would take Content-Length bytes as a body)
            self.complete = True
            self._events.append(END)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise _Stray
        self._events.append(body)

    def on_message_complete(self) -> None:
        if self._info:
            self._info = False
        elif self.upgraded:
            return  # the connection is the tunnel's now
        elif not self.complete:
            self.complete = True
            self._events.append(END)
        elif not self.head_only:
            raise _Stray


def content_length(headers: RawHeaders) -> int | None:
    for name, value in headers:
        # the length test first: most names are not 14 bytes, and need no lower()
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
