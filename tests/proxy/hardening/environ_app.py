"""A WSGI app that answers with the CGI variables its server made from the request
headers (HTTP_*, CONTENT_LENGTH, CONTENT_TYPE) as JSON: what a framework would read."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    got = {
        k: v
        for k, v in environ.items()
        if k.startswith("HTTP_") or k in ("CONTENT_LENGTH", "CONTENT_TYPE")
    }
    body = json.dumps(got).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
