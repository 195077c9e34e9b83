"""Validating reader for TOML tables: every problem is collected with its key path
and allowed values, unknown keys are errors. Shared by proxy/config.py and backends."""

from __future__ import annotations

import builtins
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found in one pass."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string with a unit ("250ms", "30s", "5m", "1h")."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        if value.strip().startswith("-"):
            raise ValueError("must not be negative")
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError('expected seconds as a number or a string like "250ms", "30s", "5m"')


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string like "1m", "64k", "10MiB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        if value.strip().startswith("-"):
            raise ValueError("must not be negative")
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError('expected bytes as an integer or a string like "64k", "10m", "1g"')


@dataclass
class Table:
    """One TOML table being read. Call `done()` after reading to flag unknown keys."""

    data: Mapping[builtins.str, Any]
    path: builtins.str
    problems: list[Problem] = field(default_factory=list)
    _seen: set[builtins.str] = field(default_factory=set)

    @classmethod
    def root(cls, data: Mapping[builtins.str, Any]) -> Table:
        return cls(data, "")

    def _key(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: builtins.str, message: builtins.str) -> None:
        self.problems.append(Problem(self._key(key), message))

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.data

    def _get(self, key: builtins.str) -> Any:
        self._seen.add(key)
        return self.data.get(key)

    def sub(self, key: builtins.str, *, required: builtins.bool = False) -> Table:
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "missing table")
            value = {}
        elif not isinstance(value, Mapping):
            self.error(key, "expected a table")
            value = {}
        return Table(value, self._key(key), self.problems)

    def str(
        self,
        key: builtins.str,
        default: builtins.str | None = None,
        *,
        required: builtins.bool = False,
    ) -> builtins.str:
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "missing (a string is required)")
            return default if default is not None else ""
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {type(value).__name__}")
            return default if default is not None else ""
        return value

    def opt_str(self, key: builtins.str) -> builtins.str | None:
        if self._get(key) is None:
            return None
        return self.str(key)

    def choice(
        self, key: builtins.str, allowed: Iterable[builtins.str], default: builtins.str
    ) -> builtins.str:
        allowed = list(allowed)
        value = self._get(key)
        if value is None:
            return default
        if value not in allowed:
            self.error(key, f"{value!r} is not one of: {', '.join(allowed)}")
            return default
        return str(value)

    def int(
        self,
        key: builtins.str,
        default: builtins.int,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> builtins.int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected an integer, got {value!r}")
            return default
        if min is not None and value < min:
            self.error(key, f"{value} is below the minimum {min}")
            return default
        if max is not None and value > max:
            self.error(key, f"{value} is above the maximum {max}")
            return default
        return value

    def float(
        self, key: builtins.str, default: builtins.float, *, min: builtins.float | None = None
    ) -> builtins.float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"expected a number, got {value!r}")
            return default
        if min is not None and value < min:
            self.error(key, f"{value} is below the minimum {min}")
            return default
        return float(value)

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {value!r}")
            return default
        return value

    def duration(
        self, key: builtins.str, default: builtins.float, *, min: builtins.float = 0.0
    ) -> builtins.float:
        value = self._get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(key, f"{value!r}: {exc}")
            return default
        if seconds < min:
            self.error(key, f"{value!r} is below the minimum {min}s")
            return default
        return seconds

    def size(
        self, key: builtins.str, default: builtins.int, *, min: builtins.int = 0
    ) -> builtins.int:
        value = self._get(key)
        if value is None:
            return default
        try:
            size = parse_size(value)
        except ValueError as exc:
            self.error(key, f"{value!r}: {exc}")
            return default
        if size < min:
            self.error(key, f"{value!r} is below the minimum {min} bytes")
            return default
        return size

    def str_list(
        self, key: builtins.str, default: list[builtins.str] | None = None
    ) -> list[builtins.str]:
        value = self._get(key)
        if value is None:
            return list(default or [])
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "expected a list of strings")
            return list(default or [])
        return list(value)

    def str_map(self, key: builtins.str) -> dict[builtins.str, builtins.str]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in value.values()
        ):
            self.error(key, "expected a table of string values")
            return {}
        return {str(k): str(v) for k, v in value.items()}

    def done(self) -> None:
        for key in self.data:
            if key not in self._seen:
                close = difflib.get_close_matches(key, self._seen, n=1)
                if close:
                    self.error(key, f"unknown key (did you mean {close[0]}?)")
                    continue
                allowed = ", ".join(sorted(self._seen)) or "(none)"
                self.error(key, f"unknown key (allowed: {allowed})")
