"""Typed control messages between the proxy and the zygote, one JSON object per
SOCK_SEQPACKET frame: {"op": <class name>, <fields>}. Both sides build and match these
dataclasses; a frame naming no known message, or the wrong fields, is a ProtocolError.

    proxy -> zygote: SpawnTemplate + 2 fds (the template's control socket, its stderr)
    zygote -> proxy: ZygoteReady | Spawned | SpawnFailed | TemplateExited
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


class ProtocolError(ValueError):
    """A frame that is not one of the messages below."""


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
    labels: dict[str, str]  # padded label variables written in place (see _linux.env_slot)


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


Message = ZygoteReady | SpawnTemplate | Spawned | SpawnFailed | TemplateExited
_BY_OP: dict[str, type[Message]] = {
    cls.__name__: cls for cls in (ZygoteReady, SpawnTemplate, Spawned, SpawnFailed, TemplateExited)
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
