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


def raw_imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            found.extend((a.name, ()) for a in node.names)
    return found


def imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """The project's imports by folder name: forkproxy.proxy.pool is read as proxy.pool."""
    return [(mod.removeprefix("forkproxy."), names) for mod, names in raw_imports(path)]


TOPS = ("proxy", "backends", "loadtest")


def test_everything_imports_the_project_under_the_forkproxy_name() -> None:
    # a user's app may have its own top-level `backends` or `proxy` package (fork mode runs
    # it with the app's folder first on sys.path): ours is only ever forkproxy.backends
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for top in (*TOPS, "tests", "examples")
        for p in sorted((ROOT / top).rglob("*.py"))
        if p.name != "__main__.py"  # `python -m proxy` in a checkout starts here
        for mod, _ in raw_imports(p)
        if mod.split(".")[0] in TOPS
    ]
    assert bad == []


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
        for top in TOPS
        for p in sorted((ROOT / top).rglob("*.py"))
        for mod, _ in imports(p)
        if mod.split(".")[0] in {"tests", "examples"}
    ]
    assert bad == []


def test_config_takes_the_protocols_values_not_its_server() -> None:
    # config reads [server] into the data path's value types; importing the server itself
    # would make parsing a config file load the whole connection machinery
    config = ROOT / "proxy" / "config.py"
    taken = {mod for mod, _ in imports(config) if mod.startswith("proxy.http")}
    assert taken <= {"proxy.http.limits", "proxy.http.headers"}


def test_admin_listener_reads_a_view_not_the_proxy() -> None:
    # proxy/admin_view.py is all it is handed: it cannot reach the data path or reload
    bad = [
        f"{name}: {mod}"
        for name in ("admin.py", "live.py", "admin_view.py")
        for mod, _ in imports(ROOT / "proxy" / name)
        if mod in {"proxy.server", "proxy.generation"} or mod.startswith("proxy.http")
    ]
    assert bad == []


# backends/support is the lowest layer: the generic pieces the proxy uses too live there
GENERIC = ("tasks.py", "table.py")
BACKEND_PACKAGES = ("process", "docker", "swarm", "vsphere")


def test_generic_pieces_import_nothing_of_the_project() -> None:
    support = ROOT / "backends" / "support"
    bad = [
        f"{name}: {mod}"
        for name in GENERIC
        for mod, _ in imports(support / name)
        if mod.split(".")[0] in TOPS
    ]
    assert bad == []


def test_support_imports_no_backend_package() -> None:
    bad = [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in sorted((ROOT / "backends" / "support").rglob("*.py"))
        for mod, _ in imports(p)
        if any(mod == f"backends.{b}" or mod.startswith(f"backends.{b}.") for b in BACKEND_PACKAGES)
    ]
    assert bad == []


def _private_backend_module(mod: str, names: tuple[str, ...]) -> bool:
    # forkproxy.backends.<x>._y, or `from forkproxy.backends.<x> import _y`
    parts = mod.split(".")
    if len(parts) < 2 or parts[0] != "backends" or parts[1] not in BACKEND_PACKAGES:
        return False
    return any(p.startswith("_") for p in parts[2:]) or (
        len(parts) == 2 and any(n.startswith("_") for n in names)
    )


def test_the_proxy_imports_no_private_module_of_a_backend() -> None:
    # what the proxy needs of a backend beyond its public surface (the /proc memory
    # reader, say) lives in backends/support/, not behind a backend's underscore
    bad = [
        f"{p.relative_to(ROOT)}: {mod} {names}"
        for p in sorted((ROOT / "proxy").rglob("*.py"))
        for mod, names in imports(p)
        if _private_backend_module(mod, names)
    ]
    assert bad == []


def test_the_private_module_check_sees_both_import_forms() -> None:
    assert _private_backend_module("backends.process._memory", ())
    assert _private_backend_module("backends.process", ("_memory",))
    assert _private_backend_module("backends.docker._x.y", ("z",))
    assert not _private_backend_module("backends.process", ("fork",))
    assert not _private_backend_module("backends.support.memory", ())
    assert not _private_backend_module("backends.process.fork", ("_private_name",))


# fork mode's modules the proxy process runs; backends/process/child/ is what runs outside it
PROXY_SIDE = (
    "__init__",
    "config",
    "fork",
    "exec",
    "check",
    "_base",
    "_template_client",
    "_zygote_client",
    "_messages",
    "log",
)


def test_the_proxys_side_of_fork_mode_never_imports_child_code() -> None:
    process = ROOT / "backends" / "process"
    bad = [
        f"{name}.py: {mod}"
        for name in PROXY_SIDE
        for mod, _ in imports(process / f"{name}.py")
        if mod.startswith("backends.process.child")
    ]
    assert bad == []


def _reaches(package: str, other: str) -> list[str]:
    return [
        f"{p.relative_to(ROOT)}: {mod}"
        for p in sorted((ROOT / "backends" / package).rglob("*.py"))
        for mod, _ in imports(p)
        if mod == f"backends.{other}" or mod.startswith(f"backends.{other}.")
    ]


def test_docker_and_swarm_share_only_the_engine_substrate() -> None:
    # what both need of the Docker engine (client, threads, error translation, unpause)
    # lives in backends/engine/: neither backend reaches into the other's modules
    assert _reaches("swarm", "docker") == []
    assert _reaches("docker", "swarm") == []


def test_the_engine_substrate_imports_no_backend_package() -> None:
    assert [bad for b in BACKEND_PACKAGES for bad in _reaches("engine", b)] == []
