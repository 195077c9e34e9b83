"""Errors talking to an instance, one tree; `strike` says whether the error is evidence
the instance may be gone (the pool counts strikes), `sent` / `stale` / `silent` what
reached it (the data path decides retries from them)."""

from __future__ import annotations


class UpstreamError(Exception):
    kind = "other"
    # a strike against the instance (lease.mark_broken()): only failures that say
    # the instance may be gone. A malformed answer is the app's answer to one request.
    strike = True

    def __init__(
        self, message: str, *, sent: bool = False, stale: bool = False, silent: bool = False
    ) -> None:
        super().__init__(message)
        self.sent = sent  # some request bytes reached the instance's socket
        self.stale = stale  # a reused keep-alive connection closed before any response byte
        self.silent = silent or stale  # the connection closed before any response byte


class ConnectFailed(UpstreamError):
    kind = "connect"


class ConnectTimeout(ConnectFailed):
    kind = "connect_timeout"


class SendTimeout(UpstreamError):
    kind = "send_timeout"


class ReadTimeout(UpstreamError):
    kind = "read_timeout"


class Disconnected(UpstreamError):
    kind = "disconnected"


class BadResponse(UpstreamError):
    kind = "bad_response"
    strike = False
