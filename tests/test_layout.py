"""The layout's import rules, checked on the source: backends never import the proxy, and
the data path reaches the pool only through its lease, and proxy/http is a protocol library
that knows nothing of forwarding, the pool or the config."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# What the data path (proxy/forwarding/) may take from proxy.pool: the lease scope it holds
# a slot in and the errors it translates.
POOL_SURFACE = {"Lease", "LeaseScope", "Pool", "PoolError"}


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            found.extend((a.name, ()) for a in node.names)
    return found


def test_backends_never_import_the_proxy() -> None:
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in sorted((ROOT / "backends").rglob("*.py"))
        for mod, _ in imports(p)
        if mod == "proxy" or mod.startswith("proxy.")
    ]
    assert bad == []


def test_data_path_uses_only_the_pools_public_surface() -> None:
    bad = [
        f"{p.relative_to(ROOT)}: {mod} {names}"
        for p in sorted((ROOT / "proxy" / "forwarding").rglob("*.py"))
        for mod, names in imports(p)
        if mod in {"proxy.pool", "proxy.policy"} and not set(names) <= POOL_SURFACE
    ]
    assert bad == []


def test_http_is_a_protocol_library() -> None:
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in sorted((ROOT / "proxy" / "http").rglob("*.py"))
        for mod, _ in imports(p)
        if (mod == "proxy" or mod.startswith("proxy.")) and not mod.startswith("proxy.http")
    ]
    assert bad == []


def test_shipped_packages_never_import_tests_or_examples() -> None:
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for top in ("proxy", "backends", "loadtest")
        for p in sorted((ROOT / top).rglob("*.py"))
        for mod, _ in imports(p)
        if mod.split(".")[0] in {"tests", "examples"}
    ]
    assert bad == []
