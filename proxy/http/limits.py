"""The bounds one client connection lives under: sizes (414/431/413), deadlines (408) and
what the server holds in memory. A plain value the server takes; `proxy/config.py` reads it
from `[server]`, so the protocol code never parses configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_url: int = 8192  # request target bytes (nginx large_client_header_buffers 8k) -> 414
    max_header_bytes: int = 32768  # all header lines together -> 431
    max_headers: int = 100  # header lines (HAProxy tune.http.maxhdr 101) -> 431
    max_body: int = 1 << 30  # bytes, 0 = unlimited (nginx client_max_body_size) -> 413
    header_timeout: float = 10.0  # first byte to end of head (HAProxy timeout http-request) -> 408
    keepalive_timeout: float = 75.0  # idle between requests (nginx keepalive_timeout 75s); 0 = off
    body_timeout: float = 60.0  # no body byte for this long (nginx client_body_timeout) -> 408
    # bytes/s, 0 = off -> 408: averaged over the body after the first 5 s (_RATE_GRACE in
    # request.py), and again from the moment the request takes an instance slot, so bytes
    # read ahead buy no time while a slot is held (Apache mod_reqtimeout MinRate; nginx
    # buffers instead)
    body_min_rate: int = 8192
    # a body up to this size is read whole before an instance slot is taken (nginx reads
    # the body before it picks an upstream); a larger one is read this far ahead, then
    # streamed under body_min_rate
    body_buffer: int = 1 << 20
    # a body larger than body_buffer but up to this size (declared, or chunked and ending
    # within it) is read whole too, what passes body_buffer written to an unlinked temp
    # file, so no slot is held while it arrives (nginx client_body_temp_path); 0 = off.
    # A larger one streams under body_min_rate as before
    body_spool: int = 64 << 20
    # bytes of request bodies on disk, all connections together; a body that would pass
    # it streams instead (as one larger than body_spool)
    max_spooled: int = 1 << 30
    # request-body bytes held in memory by all connections together; a request that would
    # hold more while it waits for an instance -> 503
    max_buffered: int = 128 << 20
    send_timeout: float = 60.0  # client not reading the response (nginx send_timeout)
    max_connections: int = 10000
    # requests parsed and queued behind the running one; more in one read and the
    # connection closes after the queued ones (their last answer says Connection: close)
    max_pipelined: int = 8
    # chunk-extension bytes in one request body -> 400 (Node's llhttp binding caps 16 KiB)
    max_chunk_ext: int = 16384
    # chunks a body may use: this many, plus one per min_chunk_avg bytes of data -> 400.
    # Each chunk costs parser callbacks; a body of 1-byte chunks is CPU, not data.
    free_chunks: int = 64
    min_chunk_avg: int = 128
