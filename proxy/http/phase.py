"""The phase of a client connection (server.py): what it does with the client's bytes and
how far it is from closing, as one value, with every move between phases in one table.
It replaces flags whose combinations had to be kept consistent by hand (closing, the
kind of deadline armed, a head begun, too many pipelined requests, a broken pipelined
request, bytes held for an upgrade, a tunnel).

Pure: no I/O, no loop. The connection keeps what a phase needs as data beside it (the
held bytes, the tunnel's ends, the error owed to a broken pipelined request), and the
requests it serves keep their own state (waiting for an instance, response started): a
connection reads the next head while it writes the last response, so reading and serving
are not one line of phases."""

from __future__ import annotations

import enum
from typing import Final


class Phase(enum.IntEnum):
    # int-valued: comparisons and hashing in C (an Enum's __hash__ is Python code), and
    # the ending phases come last, so "no further request" is `phase >= CLOSING`
    WAIT = 0  # no byte of the next head yet: a deadline then closes silently (idle)
    HEAD = 1  # a head's bytes are arriving: its deadline answers 408
    HELD = 2  # a websocket head ended: what follows is held, unparsed, until the 101
    TUNNEL = 3  # after the 101: the client's bytes go to the tunnel
    OVERFLOW = 4  # more than max_pipelined requests: reading stopped, the queued answered
    BROKEN = 5  # a pipelined request broke a rule: reading stopped, its error owed
    CLOSING = 6  # no more requests: the one in flight finishes, then the connection closes
    LINGER = 7  # an error answered, FIN sent: input discarded until the client closes
    CLOSED = 8  # the transport is gone


WAIT: Final = Phase.WAIT
HEAD: Final = Phase.HEAD
HELD: Final = Phase.HELD
TUNNEL: Final = Phase.TUNNEL
OVERFLOW: Final = Phase.OVERFLOW
BROKEN: Final = Phase.BROKEN
CLOSING: Final = Phase.CLOSING
LINGER: Final = Phase.LINGER
CLOSED: Final = Phase.CLOSED

_ENDING = frozenset((CLOSING, LINGER, CLOSED))  # reachable from every phase before them
_READING = frozenset((HEAD, WAIT, HELD, OVERFLOW, BROKEN))  # the parser's own outcomes

# phase -> the phases it may move to (besides staying, and the ending ones not yet passed)
NEXT: Final[dict[Phase, frozenset[Phase]]] = {
    WAIT: _READING | _ENDING,
    HEAD: _READING | _ENDING,
    HELD: frozenset((TUNNEL,)) | _ENDING,
    TUNNEL: _ENDING,
    OVERFLOW: _ENDING,
    BROKEN: _ENDING,
    CLOSING: frozenset((LINGER, CLOSED)),
    LINGER: frozenset((CLOSED,)),
    CLOSED: frozenset(),
}


def step(current: Phase, wanted: Phase) -> Phase:
    """The phase after asking to move from `current` to `wanted`. Closing is idempotent:
    asking for an ending phase already reached or passed (close() after the client left)
    keeps the later one. Any other move the table lacks is a bug in the connection, never
    the client's doing: RuntimeError (a plain one: mypyc compiles no builtin subclass)."""
    if wanted is current or wanted in NEXT[current]:
        return wanted
    if wanted >= CLOSING and current >= wanted:
        return current
    raise RuntimeError(f"illegal phase move {current.name} -> {wanted.name}")
