"""A tiny raw-TCP "instance" for the hardening tests, run by the exec backend as
`python raw_instance.py PORT LOG`: it answers by path with valid, broken or no responses
and appends every request line it reads to LOG (one line per request)."""

from __future__ import annotations

import asyncio
import gzip
import sys
from collections.abc import Awaitable, Callable

GZIP_BODY = gzip.compress(b"hello world", mtime=0)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
ANSWERS = {
    b"/garbage": b"HELLO THERE\r\n\r\n",
    b"/status-bad": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    b"/clte": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nab\r\n0\r\n\r\n",
    b"/dupcl": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"/badchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    b"/obsfold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    b"/hop": b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
    b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\n"
    b"Upgrade: h2c\r\nX-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: t\r\n\r\n",
    b"/bighead": b"HTTP/1.1 200 OK\r\n" + b"X-Big: %b\r\n" % (b"b" * 8000) * 10 + b"\r\n",
    b"/ws-refuse": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nConnection: close, X-A\r\n"
    b"X-A: 1\r\nX-B: 2\r\n\r\nnope",
    b"/ws-chunked": b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nnope\r\n0\r\n\r\n",
    b"/gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(GZIP_BODY), GZIP_BODY),
}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    served = 0
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            target = line.split(b" ")[1]
            with open(sys.argv[2], "ab") as log:
                log.write(line + b"\n")
            path = target.split(b"?")[0]
            if path == b"/noread":  # never reads the body, never answers
                await asyncio.sleep(3600)
            if path == b"/early":  # answers before reading the body, then closes
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nearly")
                writer.write_eof()
                # lingering close, as real servers do: closing with unread input would
                # reset the connection and could destroy the answer in flight
                while await reader.read(1 << 20):
                    pass
                break
            for h in head.split(b"\r\n")[1:]:
                name, _, value = h.partition(b":")
                if name.lower() == b"content-length":
                    await reader.readexactly(int(value))
            if path == b"/hang":
                await asyncio.sleep(3600)
            if path == b"/stall":  # a head and part of the body, then silence
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                await writer.drain()
                await asyncio.sleep(3600)
            if path == b"/close" or (path == b"/stale" and served):
                break  # read the request, answer nothing
            writer.write(ANSWERS.get(path, OK))
            await writer.drain()
            served += 1
            if path in ANSWERS:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve(handler: Handler) -> None:
    """Serve `handler` on 127.0.0.1:PORT (argv[1]) until killed (scripted_instance.py too)."""

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", int(sys.argv[1]))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    serve(handle)
