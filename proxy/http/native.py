"""The optional compiled data path: `python -m forkproxy.proxy.http.native build` compiles the hot
modules of proxy/http and proxy/forwarding with mypyc (the code is mypy-strict already)
into extension modules beside their sources, `clean` removes them, `status` says which are
in use. Python imports an extension before a .py of the same name, so a build takes effect
at the next start and a clean returns to pure Python, the default. Needs mypy (`pip
install 'forkproxy[native]'`) and a C compiler with the Python headers.

A compiled module older than its source would run code that is no longer there:
check() refuses that at startup (server.py), naming the module and the two ways out."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

# errors.py stays Python (mypyc drops class-level defaults of subclassed exceptions; it
# is not hot), as do safety.py (it subclasses a builtin), forwarding/tunnel.py
# (websockets), forwarding/failures.py (only on a failure) and this
HOT = (
    "forkproxy.proxy.http.chunks",
    "forkproxy.proxy.http.deadline",
    "forkproxy.proxy.http.flow",
    "forkproxy.proxy.http.headers",
    "forkproxy.proxy.http.limits",
    "forkproxy.proxy.http.phase",
    "forkproxy.proxy.http.request_reader",
    "forkproxy.proxy.http.request",
    "forkproxy.proxy.http.response",
    "forkproxy.proxy.http.response_reader",
    "forkproxy.proxy.http.server",
    "forkproxy.proxy.http.upstream",
    "forkproxy.proxy.http.validate",
    "forkproxy.proxy.forwarding.forward",
)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the directory holding the proxy package
GROUP = "forkproxy.proxy.http"  # the shared library: proxy/http__mypyc*.so, inside the package


class StaleBuild(RuntimeError):
    pass


def _source(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def _built(module: str) -> list[Path]:
    source = _source(module)
    return sorted(source.parent.glob(f"{source.stem}.*.so")) + sorted(
        source.parent.glob(f"{source.stem}.*.pyd")
    )


def compiled() -> list[str]:
    """The hot modules imported from a compiled extension."""
    out = []
    for name in HOT:
        mod = sys.modules.get(name)
        if mod is not None and str(getattr(mod, "__file__", "")).endswith((".so", ".pyd")):
            out.append(name)
    return out


def check() -> str:
    """'compiled (mypyc)' or 'pure Python'; StaleBuild if any extension is older than its
    source (edited or checked out after the build)."""
    stale = []
    for name in HOT:
        source = _source(name)
        for ext in _built(name):
            if source.exists() and source.stat().st_mtime > ext.stat().st_mtime:
                stale.append(f"{ext.name} is older than {source.name}")
    if stale:
        raise StaleBuild(
            "compiled data path out of date ("
            + "; ".join(stale)
            + "): rebuild with `python -m forkproxy.proxy.http.native build` or return to pure "
            + "Python "
            "with `python -m forkproxy.proxy.http.native clean`"
        )
    return "compiled (mypyc)" if compiled() else "pure Python"


def build() -> None:
    try:
        from mypyc.build import mypycify
        from setuptools import setup  # type: ignore[import-untyped]
    except ImportError as exc:
        raise SystemExit(
            f"building the compiled data path needs mypy and setuptools ({exc.name} is "
            "missing): pip install 'forkproxy[native]'"
        ) from None
    with tempfile.TemporaryDirectory(prefix="forkproxy-mypyc-") as tmp:
        cwd = Path.cwd()
        os.chdir(ROOT)  # setuptools' --inplace and mypy's config are relative to the root
        try:
            paths = [str(_source(name).relative_to(ROOT)) for name in HOT]
            setup(
                name="forkproxy-native",
                ext_modules=mypycify(paths, opt_level="3", group_name=GROUP, target_dir=tmp),
                script_args=["build_ext", "--inplace", "--build-temp", tmp, "--build-lib", tmp],
            )
        finally:
            os.chdir(cwd)


def extensions() -> list[Path]:
    """The compiled modules beside these sources (what `clean` removes)."""
    shared = [*HERE.parent.glob("http__mypyc.*.so"), *HERE.parent.glob("http__mypyc.*.pyd")]
    return [p for name in HOT for p in _built(name)] + shared


def clean() -> list[Path]:
    removed = []
    for path in extensions():
        path.unlink()
        removed.append(path)
    return removed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m forkproxy.proxy.http.native", description=__doc__)
    p.add_argument("action", choices=("build", "clean", "status"))
    args = p.parse_args(argv)
    if args.action == "build":
        build()
    elif args.action == "clean":
        for path in clean():
            print(f"removed {path}")
    # a fresh interpreter's view: what `forkproxy run` will import
    for name in HOT:
        importlib.import_module(name)
    try:
        print(f"data path: {check()}")
    except StaleBuild as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
