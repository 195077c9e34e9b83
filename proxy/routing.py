"""Which app serves a request, from its Host and path alone. Pure: no I/O, unit-tested.

Order, most specific first: the exact host name (one dict lookup), then `*.suffix`
wildcards longest suffix first (one lookup per label of the name, not one per
wildcard), then the catch-all `*`. Within the first host level that has an app whose
`path_prefix` matches, the longest prefix wins; a level where no prefix matches falls
through to the next. Nothing matches: the default app, or None (the caller answers 404).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CATCH_ALL = "*"


@dataclass(frozen=True)
class Route:
    app: str
    hosts: tuple[str, ...]  # "shop.example.com", "*.example.com" or "*"
    path_prefix: str = ""  # "" or "/": every path


def host_name(raw: bytes | str | None) -> str:
    """A Host header's name: lowercased, without port, IPv6 brackets or a final dot."""
    if raw is None:
        return ""
    host = (raw.decode("latin-1") if isinstance(raw, bytes) else raw).strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    return host.rstrip(".")


def _prefix(p: str) -> str:
    # "/api/" and "/api" mean the same; "/" every path. A prefix ends on a segment
    # boundary: "/api" takes "/api" and "/api/x", not "/apix" (_first)
    return p.rstrip("/")


# one host level: (prefix, app) pairs, longest prefix first
_Level = tuple[tuple[str, str], ...]


class Router:
    def __init__(self, routes: Iterable[Route], default: str | None = None) -> None:
        exact: dict[str, list[tuple[str, str]]] = {}
        wild: dict[str, list[tuple[str, str]]] = {}
        anyhost: list[tuple[str, str]] = []
        for r in routes:
            entry = (_prefix(r.path_prefix), r.app)
            for h in r.hosts:
                h = h.lower().rstrip(".")
                if h == CATCH_ALL:
                    anyhost.append(entry)
                elif h.startswith("*."):
                    wild.setdefault(h[2:], []).append(entry)
                else:
                    exact.setdefault(h, []).append(entry)

        def level(entries: list[tuple[str, str]]) -> _Level:
            return tuple(sorted(entries, key=lambda e: -len(e[0])))

        self._exact = {h: level(e) for h, e in exact.items()}
        self._wild = {s: level(e) for s, e in wild.items()}
        self._any = level(anyhost)
        self.default = default

    def match(self, host: bytes | str | None, path: bytes | str) -> str | None:
        """The app for this Host header and request target, or None (404)."""
        name = host_name(host)
        p = path.decode("latin-1") if isinstance(path, bytes) else path
        if "?" in p:
            p = p[: p.index("?")]
        if (app := _first(self._exact.get(name), p)) is not None:
            return app
        if self._wild:
            dot = name.find(".")
            while dot >= 0:  # "a.b.example.com": "b.example.com", then "example.com", "com"
                if (app := _first(self._wild.get(name[dot + 1 :]), p)) is not None:
                    return app
                dot = name.find(".", dot + 1)
        if (app := _first(self._any, p)) is not None:
            return app
        return self.default


def _first(entries: _Level | None, path: str) -> str | None:
    for prefix, app in entries or ():
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return app
    return None
