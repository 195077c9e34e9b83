"""Logging setup: text for people, JSON lines for log shippers. Records may carry
structured fields (`extra={"fields": {...}}`): JSON puts them at the top level of the
object (text shows the message alone, which says the same for people). The access log is
one such record per request."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forkproxy.proxy.http.request import Request

access_log = logging.getLogger("forkproxy.access")

REQUEST_ID_MAX = 200
_REQUEST_ID = b"x-request-id"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


LEVELS = ("debug", "info", "warning", "error")


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level != "debug":
        logging.getLogger("aiohttp.access").setLevel(logging.INFO)


# -- request ids ------------------------------------------------------------------------


def valid_request_id(value: bytes) -> bool:
    """Printable ASCII without spaces, at most REQUEST_ID_MAX bytes: safe to log, to put in
    a header and to hand to an app. Anything else is replaced, not trusted."""
    return 0 < len(value) <= REQUEST_ID_MAX and all(0x21 <= b <= 0x7E for b in value)


def new_request_id() -> bytes:
    return os.urandom(16).hex().encode("ascii")


def take_request_id(req: Request) -> bytes:
    """The client's X-Request-ID if it is valid, else a new one; the request's headers then
    carry exactly that one, so the instance gets the id the client gets back."""
    given = [v for n, v in req.headers if n.lower() == _REQUEST_ID]
    if len(given) == 1 and valid_request_id(given[0]):
        return given[0]
    rid = new_request_id()
    if given:
        req.headers = [(n, v) for n, v in req.headers if n.lower() != _REQUEST_ID]
    req.headers.append((b"X-Request-ID", rid))
    return rid


# -- the access log ---------------------------------------------------------------------


def access_fields(req: Request, sent: int, now: float) -> dict[str, Any]:
    """One request's access-log fields. queue_ms: time held for an instance slot; cold: that
    wait included an instance's start. Without an instance (refused, failed before a slot)
    instance is None and queue_ms 0."""
    lease = req.lease
    return {
        "method": req.method,
        "path": req.path.decode("latin-1"),
        "status": req.status or 499,
        "bytes": sent,
        "duration_ms": round((now - req.started) * 1000, 1),
        "queue_ms": round(lease.queued * 1000, 1) if lease is not None else 0.0,
        "cold": lease.cold if lease is not None else False,
        "instance": lease.instance_id if lease is not None else None,
        "request_id": req.request_id.decode("ascii") if req.request_id is not None else None,
        "peer": req.peer,
    }


def log_access(req: Request, sent: int) -> None:
    fields = access_fields(req, sent, time.monotonic())
    access_log.info(
        '%s "%s %s HTTP/%s" %d %dB %.1fms queue=%.1fms%s instance=%s id=%s',
        fields["peer"],
        fields["method"],
        fields["path"],
        req.version,
        fields["status"],
        sent,
        fields["duration_ms"],
        fields["queue_ms"],
        " cold" if fields["cold"] else "",
        fields["instance"] or "-",
        fields["request_id"] or "-",
        extra={"fields": fields},
    )
