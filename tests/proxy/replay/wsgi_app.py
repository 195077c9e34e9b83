"""The replay suite's WSGI app (gunicorn, waitress, fork mode): see marker.py."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from tests.proxy.replay.marker import DELAY, ID_HEADER, answer


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
    if environ.get("QUERY_STRING") and "?" not in target:
        target += "?" + environ["QUERY_STRING"]
    rid = environ.get("HTTP_" + ID_HEADER.upper().replace("-", "_"), "")
    path = environ["PATH_INFO"]
    status, headers, out = answer(environ["REQUEST_METHOD"], target, rid, body)
    write = start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    if path == "/r/head-late":
        write(b"")  # the head goes out now (waitress, gunicorn), the body after a while
        time.sleep(DELAY)
    if path == "/r/file" and "wsgi.file_wrapper" in environ:
        return environ["wsgi.file_wrapper"](io.BytesIO(out))  # type: ignore[no-any-return]
    return [out]
