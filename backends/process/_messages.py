"""Typed control messages between the proxy and its helper processes (the fork template,
the zygote), one JSON object per SOCK_SEQPACKET frame: {"op": <class name>, <fields>}.
Both sides build and match these dataclasses; a frame naming no known message, or the
wrong fields, is a ProtocolError.

    proxy -> template: StartInstance + 1 fd (its listening socket) | SignalInstance
    template -> proxy: TemplateReady | TemplateFailed (first, once)
                       InstanceStarted | InstanceError | InstanceExited
                       InstanceWorking (its app at work after a response) | SparesWaiting
    proxy -> zygote:   SpawnTemplate + 2 fds (the template's control socket, its stderr)
                       CheckFresh
    zygote -> proxy:   ZygoteReady | Spawned | SpawnFailed | TemplateExited | Freshness
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


class ProtocolError(ValueError):
    """A frame that is not one of the messages below."""


# -- the template ------------------------------------------------------------------


@dataclass(frozen=True)
class StartInstance:
    id: str
    env: dict[str, str]  # set in the fork before the app sees it


@dataclass(frozen=True)
class SignalInstance:
    id: str
    sig: int


@dataclass(frozen=True)
class TemplateReady:
    pid: int
    kind: str  # "aiohttp" | "asgi" | "wsgi"
    build_s: float  # the app's import and warm-up, as the template measured it


@dataclass(frozen=True)
class TemplateFailed:
    error: str  # one line a person can act on
    traceback: str


@dataclass(frozen=True)
class InstanceStarted:
    id: str
    pid: int
    spare: bool  # a spare forked ahead took it (prefork)


@dataclass(frozen=True)
class InstanceError:
    id: str
    error: str


@dataclass(frozen=True)
class InstanceExited:
    id: str
    pid: int
    reason: str  # "exited:N" | "signal:N"


@dataclass(frozen=True)
class InstanceWorking:
    id: str
    working: bool


@dataclass(frozen=True)
class SparesWaiting:
    n: int


# -- the zygote --------------------------------------------------------------------


@dataclass(frozen=True)
class ZygoteReady:
    pid: int
    preloaded: list[str]  # modules it imported (those not installed are left out)
    seconds: float  # how long the imports took


@dataclass(frozen=True)
class SpawnTemplate:
    """Fork a template for one app. The fork applies cwd, env and labels, then runs
    forkproxy.backends.process.template.serve(spec) on the first fd passed along."""

    token: int  # echoed in the answer: several spawns may be in flight
    spec: dict[str, Any]  # what template.serve reads (the same as an exec'd template's)
    env: dict[str, str]  # the template's whole environment
    cwd: str
    labels: dict[str, str]  # padded label variables written in place (see _procfs.env_slot)


@dataclass(frozen=True)
class CheckFresh:
    """Has any file the zygote imported changed since (a pip upgrade, an edited checkout)?
    Asked when a new app generation (a start, a reload) first wants a template."""

    token: int


@dataclass(frozen=True)
class Freshness:
    token: int
    changed: str  # the first file found changed, or "" when none has


@dataclass(frozen=True)
class Spawned:
    token: int
    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    token: int
    error: str


@dataclass(frozen=True)
class TemplateExited:
    pid: int
    returncode: int  # as asyncio reports it: the exit code, or -signal


Message = (
    StartInstance
    | SignalInstance
    | TemplateReady
    | TemplateFailed
    | InstanceStarted
    | InstanceError
    | InstanceExited
    | InstanceWorking
    | SparesWaiting
    | ZygoteReady
    | SpawnTemplate
    | CheckFresh
    | Freshness
    | Spawned
    | SpawnFailed
    | TemplateExited
)
_BY_OP: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        StartInstance,
        SignalInstance,
        TemplateReady,
        TemplateFailed,
        InstanceStarted,
        InstanceError,
        InstanceExited,
        InstanceWorking,
        SparesWaiting,
        ZygoteReady,
        SpawnTemplate,
        CheckFresh,
        Freshness,
        Spawned,
        SpawnFailed,
        TemplateExited,
    )
}


def encode(msg: Message) -> bytes:
    return json.dumps({"op": type(msg).__name__, **dataclasses.asdict(msg)}).encode()


def decode(data: bytes) -> Message:
    try:
        fields = json.loads(data)
        cls = _BY_OP[fields.pop("op")]
        return cls(**fields)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"not a control message: {data[:200]!r}") from exc
