"""A missing optional dependency names the extra that installs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.support.extras import MissingExtra, extra_needed
from tests.backends.process.helpers import MakeBackend


def test_known_modules_name_their_extra_and_others_pass_through() -> None:
    wanted = r"pip install 'forkproxy\[docker\]'"
    with pytest.raises(MissingExtra, match=wanted), extra_needed("the docker backend"):
        raise ModuleNotFoundError("No module named 'requests'", name="requests.adapters")
    with pytest.raises(ModuleNotFoundError, match="no_such_thing") as info, extra_needed("x"):
        import no_such_thing  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(info.value, MissingExtra)


async def test_an_asgi_app_without_uvicorn_names_the_asgi_extra(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    # The template's interpreter cannot import uvicorn (as after `pip install forkproxy`).
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['uvicorn'] = None\n")
    backend = make_backend(app="examples.asgi_app:app", env={"PYTHONPATH": str(tmp_path)})
    with pytest.raises(BackendConfigError) as info:
        await backend.prepare()
    assert "pip install 'forkproxy[asgi]'" in str(info.value)
