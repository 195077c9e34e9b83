"""The process backend's loggers, and its instances' output attributed to them.

An exec instance's stderr is a pipe the proxy reads; a fork instance writes to its
template's stderr, which is one pipe for the template and all its children, so a fork
marks each of its lines with its id (`attribute`, run in the child once it has one) and
the reader takes the mark off. Every line becomes a `forkproxy.instance` record with the
instance id as a field (`{"instance": ...}` in JSON logs). What a fork writes straight to
file descriptor 2 (C extensions) bypasses the mark and is attributed to the template."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import IO, Any

log = logging.getLogger("forkproxy.backends.process")
output_log = logging.getLogger("forkproxy.instance")

LINE_MAX = 1000  # characters of one output line kept (a giant line must not flood the log)
_CHUNK = 64 * 1024
_MARK = re.compile(r"\[instance ([A-Za-z0-9_.:-]{1,64})\] ")


def emit(source: str, line: bytes) -> tuple[str, str]:
    """Log one line of output read from `source` (an instance id, or "template"); a line
    marked by a fork is its instance's. Returns (instance, text)."""
    text = line[:LINE_MAX].decode(errors="replace").rstrip()
    who = source
    if (m := _MARK.match(text)) is not None:
        who, text = m.group(1), text[m.end() :]
    output_log.info("[%s] %s", who, text, extra={"fields": {"instance": who}})
    return who, text


async def relay(
    stream: asyncio.StreamReader,
    source: str,
    on_line: Callable[[str, str], None] | None = None,
) -> None:
    """Read `stream` to its end, logging each line (see emit); `on_line(instance, text)`
    sees each too (an exec instance keeps its tail for the reason of its death)."""
    partial = b""
    # chunks, not readline(): one giant line must not end the reader
    while chunk := await stream.read(_CHUNK):
        *lines, partial = (partial + chunk).split(b"\n")
        partial = partial[-LINE_MAX * 4 :]
        for line in lines:
            who, text = emit(source, line)
            if on_line is not None:
                on_line(who, text)
    if partial:
        who, text = emit(source, partial)
        if on_line is not None:
            on_line(who, text)


class Attributed:
    """A text stream that marks each line with an instance id before passing it on whole
    (one write per line: lines of several forks on one pipe do not interleave)."""

    def __init__(self, inner: IO[str], instance_id: str) -> None:
        self._inner = inner
        self._mark = f"[instance {instance_id}] "
        self._partial = ""
        self._lock = threading.Lock()  # a WSGI app's threads write at once

    def write(self, s: str) -> int:
        with self._lock:
            text = self._partial + s
            *lines, self._partial = text.split("\n")
            if lines:
                self._inner.write("".join(f"{self._mark}{line}\n" for line in lines))
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._inner.write(f"{self._mark}{self._partial}\n")
                self._partial = ""
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self._inner, name)


def attribute(instance_id: str) -> None:
    """In a fork that just became `instance_id`: its stderr and stdout lines, and those of
    the logging handlers the app set up on them before the fork, carry its id."""
    for name in ("stderr", "stdout"):
        old = getattr(sys, name)
        if old is None:
            continue
        new = Attributed(getattr(old, "_inner", old), instance_id)  # a spare re-labelled
        setattr(sys, name, new)
        _retarget(old, new)


def _retarget(old: object, new: Attributed) -> None:
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if hasattr(lg, "handlers")]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is old:
                h.stream = new
