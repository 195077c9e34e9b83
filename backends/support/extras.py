"""Optional dependencies and the extra that installs each: a missing one names the
command that fixes it (pip install 'forkproxy[docker]') instead of "No module named"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# top-level import name -> the forkproxy extra that brings it (pyproject.toml)
EXTRAS: dict[str, str] = {
    "docker": "docker",
    "requests": "docker",
    "pyVmomi": "vsphere",
    "pyVim": "vsphere",
    "uvicorn": "asgi",
    "locust": "bench",
    "matplotlib": "bench",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra has it."""


def hint(exc: ModuleNotFoundError, needed_for: str) -> MissingExtra | None:
    """The MissingExtra for `exc`, or None if it is not one of our optional modules."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return MissingExtra(
        f"{needed_for} needs {top!r}, which is not installed: pip install 'forkproxy[{extra}]'",
        name=exc.name,
    )


@contextlib.contextmanager
def extra_needed(needed_for: str) -> Iterator[None]:
    """Turn a ModuleNotFoundError for an optional dependency into a MissingExtra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = hint(exc, needed_for)
        if missing is None:
            raise
        raise missing from exc
