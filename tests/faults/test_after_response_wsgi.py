"""Work a WSGI app does after its response, in its iterable's close() (waitress calls it
once the body is written: Django's request_finished, Flask's teardown run there): the
instance counts as working until close() returns, so it is not stopped as idle mid-job."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from forkproxy.backends.process import _working
from tests.conftest import ProxyProcess, eventually, get, instances
from tests.faults.helpers import config


class _SlowClose:
    """One chunk; close() sleeps, then writes the file (an email sent after the answer)."""

    def __init__(self, path: str, secs: float) -> None:
        self.path, self.secs = path, secs

    def __iter__(self) -> Iterator[bytes]:
        return iter([b"sent"])

    def __len__(self) -> int:
        return 1

    def close(self) -> None:
        time.sleep(self.secs)
        Path(self.path).write_text("done")


def slow_close_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """WSGI: GET /?path=P&s=N answers at once; its close() writes P after N seconds."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    if "path" not in query:
        return [b"sent"]
    return _SlowClose(query["path"][0], float(query.get("s", ["2"])[0]))


async def test_work_in_close_after_the_response_completes(
    proxy_process: Callable[[str], ProxyProcess], tmp_path: Path
) -> None:
    p = proxy_process(
        config(
            app="tests.faults.test_after_response_wsgi:slow_close_app",
            pool='idle_ttl = "200ms"\ntick = "50ms"',
            backend='stop_grace = "1s"',
        )
    )
    await p.start()
    done = tmp_path / "done"
    t0 = time.monotonic()
    assert await get(f"{p.url}/?path={done}&s=4") == (200, "sent")
    assert time.monotonic() - t0 < 3  # the answer did not wait for close()
    await asyncio.sleep(1.0)  # well past idle_ttl: an idle instance would be stopped now
    assert [(i["state"], i["working"]) for i in await instances(p)] == [("ready", True)]
    await eventually(done.exists, 15, "the file close() writes")

    async def idle_and_stopped() -> bool:
        return await instances(p) == []

    await eventually(idle_and_stopped, 10, "the instance to go idle and stop once done")


async def test_a_stop_waits_for_close_up_to_stop_grace(
    proxy_process: Callable[[str], ProxyProcess], tmp_path: Path
) -> None:
    p = proxy_process(
        config(
            app="tests.faults.test_after_response_wsgi:slow_close_app",
            backend='stop_grace = "4s"',  # the proxy's shutdown_timeout: 5 s
        )
    )
    await p.start()
    done = tmp_path / "done"
    assert await get(f"{p.url}/?path={done}&s=2") == (200, "sent")
    p.signal(signal.SIGTERM)  # the proxy stops its instance while close() runs
    assert await p.wait(30) == 0
    assert done.exists(), "close() ran to its end before the instance exited"


# -- AfterClose on its own: which closes are reported ---------------------------------


class _Body:
    def __init__(self, secs: float) -> None:
        self.secs = secs
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter([b"x"])

    def close(self) -> None:
        time.sleep(self.secs)
        self.closed = True


def _watched(secs: float) -> tuple[_working.AfterClose, list[bool]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return _Body(float(environ["secs"]))

    after = _working.AfterClose(app)
    said: list[bool] = []
    threading.Thread(target=after.watch, args=(said.append,), daemon=True).start()
    return after, said


def test_a_quick_close_is_never_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # a notice far above what a thread switch can take on a busy box
    monkeypatch.setattr(_working, "NOTICE", 0.5)
    after, said = _watched(0.0)
    for _ in range(50):
        body = after({"secs": "0"}, lambda *a: None)
        list(body)
        body.close()
    time.sleep(_working.NOTICE * 5)
    assert said == []


def test_a_long_close_is_reported_while_it_runs() -> None:
    after, said = _watched(0.0)
    body = after({"secs": "3"}, lambda *a: None)
    worker = threading.Thread(target=body.close)
    worker.start()
    deadline = time.monotonic() + 2.5
    while said != [True] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert said == [True]
    assert worker.is_alive()
    worker.join()
    deadline = time.monotonic() + 5
    while said != [True, False] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert said == [True, False]


def test_the_wrapped_iterable_keeps_its_length_and_what_has_no_close_is_untouched() -> None:
    class Sized(_Body):
        def __len__(self) -> int:
            return 1

    after = _working.AfterClose(lambda environ, sr: Sized(0.0))
    assert len(after({}, lambda *a: None)) == 1  # waitress sets Content-Length by it
    plain = [b"a"]
    assert _working.AfterClose(lambda environ, sr: plain)({}, lambda *a: None) is plain
