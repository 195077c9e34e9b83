"""forkproxy with its data path compiled (proxy/http/native.py), for the data-path section
to measure both ways: a copy of the checkout in the bench's work directory, built there,
so the checkout itself stays pure Python."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from pathlib import Path

from forkproxy.loadtest.run.procs import PYTHON, REPO, run_captured
from forkproxy.proxy.http import native as hn

BUILD_TIMEOUT = 300.0  # seconds; about 30 on the 2-core reference box

# `python -m forkproxy` from the copy's root imports the copy's proxy first (sys.path[0])
COMMAND = [PYTHON, "-m", "forkproxy"]


def missing() -> str | None:
    """Why a compiled build cannot be made here, or None."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypy (with mypyc) is not installed: pip install 'forkproxy[native]'"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (cc/gcc) to build the compiled data path"
    return None


def _copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    for package in ("proxy", "backends", "loadtest", "examples"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    # the import namespace: forkproxy/{proxy,backends,loadtest} are relative symlinks, so
    # the copy's resolve to the copy's folders. Without it `forkproxy.*` came from the
    # installed (editable) checkout: the build wrote its modules into the checkout, and
    # every later run of the "pure Python" forkproxy imported them
    shutil.copytree(REPO / "forkproxy", dest / "forkproxy", symlinks=True, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")  # mypy's settings


async def build(work: Path) -> Path | str:
    """A compiled copy's root directory, or why it could not be built."""
    why = missing()
    if why is not None:
        return why
    root = work / "native"
    before = set(hn.extensions())
    await asyncio.to_thread(_copy, root)
    ran = await run_captured(
        [PYTHON, "-m", "forkproxy.proxy.http.native", "build"], BUILD_TIMEOUT, cwd=root
    )
    if ran is None:
        return f"the mypyc build took longer than {BUILD_TIMEOUT:g} s"
    text = ran.out.strip().splitlines()
    if ran.returncode != 0 or not text or "compiled (mypyc)" not in text[-1]:
        return f"the mypyc build failed: {text[-1] if text else 'no output'}"
    if leaked := sorted(set(hn.extensions()) - before):
        return f"the mypyc build wrote into the checkout, not its copy: {leaked[0]}"
    return root


def pure_checkout() -> str | None:
    """Why this checkout's forkproxy is not pure Python (compiled modules beside its
    sources would be imported by the row that claims to be pure), or None."""
    found = hn.extensions()
    if not found:
        return None
    return (
        f"the checkout holds {len(found)} compiled modules ({found[0].name}, ...): "
        "`python -m forkproxy.proxy.http.native clean` first"
    )
