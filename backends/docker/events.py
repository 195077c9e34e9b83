"""Docker engine events for the docker backend: the thread side that reads one engine's
blocking event stream and hands each event to the event loop, and their parsing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("forkproxy.backend.docker")


@dataclass(frozen=True)
class ContainerEvent:
    action: str  # "die", "oom", "start", ...
    container_id: str
    exit_code: str  # "" unless the action is "die"


def parse(event: dict[str, Any]) -> ContainerEvent:
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    return ContainerEvent(
        action=str(event.get("Action") or event.get("status") or ""),
        container_id=str(actor.get("ID") or event.get("id") or ""),
        exit_code=str(attrs.get("exitCode", "")),
    )


def pump(
    stream: Any,
    loop: asyncio.AbstractEventLoop,
    deliver: Callable[[ContainerEvent], None],
    source: str,
) -> int | None:
    """Thread side: deliver each event on the loop until the stream ends (closed by us,
    or the engine went away); return the last event's time for a resubscription."""
    last: int | None = None
    try:
        for event in stream:
            last = event.get("time", last)
            loop.call_soon_threadsafe(deliver, parse(event))
    except RuntimeError:  # the loop closed under us
        pass
    except Exception as exc:
        log.debug("event stream of %s ended: %r", source, exc)
    return last
