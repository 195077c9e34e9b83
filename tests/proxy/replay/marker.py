"""What every app of the replay suite answers, so that the bytes a server writes say
which request it parsed: `seen=ID;METHOD;TARGET;BODY_LEN;SHA` in an X-Replay-Seen header
and as the body (ID is the client's X-Req-Id). The /r/* paths make the server misbehave
on purpose: their bodies are LATE, a whole HTTP response owned by the requester, which a
proxy must never hand to another client (node_app.js mirrors this in JavaScript)."""

from __future__ import annotations

import hashlib

HEADER = "X-Replay-Seen"
DELAY = 0.15  # seconds between the head and the body on /r/head-late
ID_HEADER = "X-Req-Id"
# path -> (status, the body's framing): every method, HEAD included, gets the body
MISBEHAVE = {
    "/r/head-body": 200,  # a body to HEAD too (frameworks usually strip it, servers may not)
    "/r/head-late": 200,  # the same, the body DELAY after the head (a slow file, a stream)
    "/r/file": 200,  # the body through wsgi.file_wrapper (what Django's FileResponse uses)
    "/r/204-body": 204,
    "/r/304-body": 304,
    "/r/overlong": 200,  # Content-Length: 2 and more bytes after them
}


def seen(method: str, target: str, rid: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()[:12]
    return f"seen={rid or 'anon'};{method};{target};{len(body)};{digest}"


def late(rid: str) -> bytes:
    """A complete response carrying the requester's id: stray bytes that look like one."""
    text = b"late=%b" % (rid or "anon").encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Replay-Late: %b\r\n\r\n%b" % (
        len(text),
        text,
        text,
    )


def answer(
    method: str, target: str, rid: str, body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for a request, by its path."""
    path = target.split("?", 1)[0]
    mark = seen(method, target, rid, body)
    if path in MISBEHAVE:
        out = late(rid)
        if path == "/r/overlong":
            return 200, [(HEADER, mark), ("Content-Length", "2")], b"ok" + out
        headers = [(HEADER, mark)]
        if MISBEHAVE[path] == 200:
            headers.append(("Content-Length", str(len(out))))
        return MISBEHAVE[path], headers, out
    text = mark.encode()
    return 200, [(HEADER, mark), ("Content-Length", str(len(text)))], text
