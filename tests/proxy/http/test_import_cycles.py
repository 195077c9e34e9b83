"""proxy/http's modules import one another without a cycle, counting imports under
TYPE_CHECKING too: each of those was a back-reference (a request to its connection, a
response to its connection), and a cycle means neither side can be used alone."""

from __future__ import annotations

import ast
from pathlib import Path

import forkproxy.proxy.http

PACKAGE = "forkproxy.proxy.http"
HERE = Path(forkproxy.proxy.http.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The forkproxy.proxy.http modules `path` imports, anywhere in it (TYPE_CHECKING blocks and
    function bodies included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            mod = name.removeprefix(PACKAGE + ".").split(".")[0]
            if name.startswith(PACKAGE + ".") and (HERE / f"{mod}.py").exists():
                found.add(mod)
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p) - {p.stem} for p in HERE.glob("*.py")}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> list[str] | None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(edges.get(mod, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        path.pop()
        state[mod] = 2
        return None

    for mod in sorted(edges):
        if mod not in state and (found := visit(mod)) is not None:
            return found
    return None


def test_cycle_finds_one() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert cycle(edges) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_type_checking_imports_count(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from forkproxy.proxy.http.server import HttpConnection\n"
    )
    assert imports_of(probe) == {"server"}


def test_no_import_cycle_in_proxy_http() -> None:
    edges = graph()
    assert {"server", "request", "request_reader", "response", "upstream"} <= set(edges)
    assert cycle(edges) is None, " -> ".join(cycle(edges) or [])
