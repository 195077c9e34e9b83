"""The kill sequence every backend that owns processes uses: SIGTERM, up to `grace` for a
clean exit, then SIGKILL and up to KILL_WAIT more. The caller says how a signal is sent
(to a pid, a process group, through the fork template) and how an exit is seen."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

# After SIGKILL only a process stuck in the kernel (uninterruptible I/O) is still there.
KILL_WAIT = 5.0

Send = Callable[[int], object]  # may return an awaitable (a signal sent through a pipe)
Gone = Callable[[float], Awaitable[bool]]  # waits up to N seconds; True once it exited


async def within(secs: float, exit: asyncio.Future[Any] | Coroutine[Any, Any, Any]) -> bool:
    """True if `exit` completes within `secs`. A future is left running on timeout (others
    may be waiting on it too); a coroutine is cancelled."""
    if isinstance(exit, asyncio.Future):
        done, _ = await asyncio.wait({exit}, timeout=secs)
        return bool(done)
    try:
        await asyncio.wait_for(exit, secs)
    except TimeoutError:
        return False
    return True


async def terminate(what: str, send: Send, gone: Gone, grace: float, log: logging.Logger) -> bool:
    """SIGTERM → grace → SIGKILL → KILL_WAIT. `what` names it in the log ("instance i1
    (pid 42)"). False if it outlived even SIGKILL (logged as an error)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT)):
        sent = send(sig)
        if inspect.isawaitable(sent):
            await sent
        if await gone(wait):
            return True
        if sig == signal.SIGTERM:
            log.warning(
                "%s: grace period (%gs) expired after SIGTERM; sending SIGKILL", what, grace
            )
    log.error("%s did not exit within %gs of SIGKILL", what, KILL_WAIT)
    return False
