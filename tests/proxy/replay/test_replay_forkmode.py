"""Issue 21 (b), fork mode's WSGI side (backends/process/_wsgi.py): an instance forked
by `mode = "fork"` never writes a body to HEAD, nor for 204 / 304, whatever the app
returns (a plain WSGI body, a body after a delay, Django's FileResponse through
wsgi.file_wrapper). Judged on the raw bytes the instance writes, recorded by the tee
between a client and the instance, and through the proxy with a victim behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import eventually, free_port, run_proxy
from tests.proxy.hardening.strict import judge
from tests.proxy.replay import tee
from tests.proxy.replay.cases import request_cases, response_cases
from tests.proxy.replay.marker import DELAY, ID_HEADER, late
from tests.proxy.replay.runner import LIMITS, Lab, Recording, report, run_family, victim
from tests.proxy.replay.servers import AIOHTTP, ASGI, WSGI
from tests.proxy.replay.wire import ids, talk

ASKS = [
    ("HEAD", "/r/file"),
    ("HEAD", "/r/head-body"),
    ("HEAD", "/r/head-late"),
    ("GET", "/r/204-body"),
    ("GET", "/r/304-body"),
    ("HEAD", "/r/304-body"),
]


def _request(method: str, path: str, rid: str) -> bytes:
    return b"%b %b HTTP/1.1\r\nHost: t\r\n%b: %b\r\n\r\n" % (
        method.encode(),
        path.encode(),
        ID_HEADER.encode(),
        rid.encode(),
    )


@pytest.mark.parametrize(
    "app", ["tests.proxy.replay.wsgi_app:app", "tests.proxy.replay.django_app:application"]
)
async def test_fork_mode_wsgi_writes_no_body_to_head_204_304(tmp_path: Path, app: str) -> None:
    backend = {"type": "process", "mode": "fork", "app": app, "app_kind": "wsgi"}
    pool = {"min_instances": 1, "max_instances": 1, "max_concurrency": 4}
    async with run_proxy(backend=backend, pool=pool) as p:
        endpoint = ""

        async def warm() -> bool:
            nonlocal endpoint
            endpoint = next((i["endpoint"] for i in await p.instances() if i["endpoint"]), "")
            return bool(endpoint)

        await eventually(warm, 20, "a warm instance")
        instance_port = int(endpoint.rsplit(":", 1)[1])
        relay = await tee.start(free_port(), instance_port, tmp_path)
        port = relay.sockets[0].getsockname()[1]
        lab = Lab("fork-wsgi", p.proxy.listen_port, Recording(tmp_path))
        try:
            for i, (method, path) in enumerate(ASKS):
                # straight to the instance through the tee: the answer, then the next one
                wire = _request(method, path, f"a{i}") + _request("GET", "/next", f"b{i}")
                got = await talk(port, wire, [method, "GET"], timeout=3)
                await asyncio.sleep(DELAY + 0.1)  # a late body would be here by now
                s2c = b"".join(s for _, s in lab.recording.connections()[-1:])
                assert b"late=" not in s2c, (method, path, s2c)
                j = judge(s2c, [method, "GET"])
                assert j.error is None and not j.rest and j.answers, (path, s2c)
                first = j.answers[0]
                assert first.body == b"", (path, s2c)
                if first.header(b"connection") != b"close":  # else the instance closed
                    assert [ids(a.body) for a in j.answers[1:]] == [[f"b{i}"]], (path, s2c)
                if method == "HEAD" and path != "/r/304-body":
                    # the head says what a GET would get: Content-Length as the app set it
                    length = first.header(b"content-length")
                    assert length == str(len(late(f"a{i}"))).encode(), (path, s2c)
                assert got.data  # the client got the bytes too
                # through the proxy: a victim right after gets its own answer
                await talk(lab.port, _request(method, path, f"c{i}"), [method], timeout=3)
                assert await victim(lab, f"c{i}v") is None
        finally:
            relay.close()
            await relay.wait_closed()


@pytest.mark.parametrize(("kind", "app"), [("wsgi", WSGI), ("asgi", ASGI), ("aiohttp", AIOHTTP)])
async def test_real_fork_mode_keeps_every_answer_with_its_client(kind: str, app: str) -> None:
    backend = {"type": "process", "mode": "fork", "app": app, "app_kind": kind}
    pool = {"min_instances": 1, "max_instances": 1, "max_concurrency": 4}
    cases = [c for c in request_cases() if c.name.startswith("attack/")] + response_cases()
    async with run_proxy(backend=backend, pool=pool, server=LIMITS) as p:
        lab = Lab(f"fork-mode-{kind}", p.proxy.listen_port, None)
        out = await run_family(lab, "f", cases)
    report(lab, "fork mode, client side", out)
    assert not out.problems, out.problems
