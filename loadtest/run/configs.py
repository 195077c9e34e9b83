"""The small TOML documents forkproxy configs are made of: merge overrides in, write with tomli-w.

tomli-w writes but does not merge, so the deep merge (a few lines) stays here.
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


def dumps(doc: Mapping[str, Any]) -> str:
    """TOML text for `doc`. TOML can spell nan and inf, but no forkproxy setting means them:
    one here is a failed measurement upstream, so it is refused where the config is made."""
    import tomli_w  # the bench extra; `forkproxy` itself imports this module for tune's options

    _require_finite(doc, "")
    return tomli_w.dumps(doc)


def inline(v: Any) -> str:
    """One value on one line, for reports. JSON's spelling of strings, numbers, booleans and
    lists is also TOML's; tomli-w has no inline form (it writes arrays over several lines)."""
    return json.dumps(v)


def _require_finite(v: Any, where: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{where or 'value'}: {v!r} is not a usable setting")
    if isinstance(v, Mapping):
        for k, x in v.items():
            _require_finite(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, list | tuple):
        for i, x in enumerate(v):
            _require_finite(x, f"{where}[{i}]")
