"""Write the small TOML documents forkproxy configs are made of, and merge overrides into them.

The stdlib reads TOML but cannot write it; configs here are tables of scalars and lists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge tables: `overrides` wins key by key, nested tables merge."""
    out: dict[str, Any] = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v!r} here")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)


def dumps(doc: Mapping[str, Any], _prefix: str = "") -> str:
    scalars = [(k, v) for k, v in doc.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in doc.items() if isinstance(v, Mapping)]
    lines = [f"{_key(k)} = {value(v)}" for k, v in scalars]
    for k, v in tables:
        name = f"{_prefix}{_key(k)}"
        body = dumps(v, name + ".")
        lines += ["", f"[{name}]", body] if body else ["", f"[{name}]"]
    return "\n".join(lines).strip("\n") + "\n" if _prefix == "" else "\n".join(lines)
