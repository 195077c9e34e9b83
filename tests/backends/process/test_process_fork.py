"""Fork mode beyond the contract: ASGI apps, the warmup hook, who dies with whom,
leftovers after a crash, and apps that fail in the template."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from forkproxy.backends.base import BackendContext
from forkproxy.backends.errors import BackendConfigError
from forkproxy.backends.process._procfs import is_running
from forkproxy.backends.process.leftovers import scan
from tests.backends.contract import deaths, get, recording_context, serves
from tests.backends.process.helpers import REPO, MakeBackend, alive_pids
from tests.conftest import eventually


async def wait_all_gone(pids: list[int], within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while alive_pids(pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return alive_pids(pids)


async def test_asgi_app_is_served(make_backend: MakeBackend) -> None:
    backend = make_backend(app="examples.asgi_app:app")
    await backend.prepare()
    inst = await backend.start("asgi-1")
    status, body = await get(inst.endpoint.url + "/")
    assert status == 200
    assert body == b"hello from asgi instance asgi-1\n"
    status, _ = await get(inst.endpoint.url + "/healthz")
    assert status == 200


async def test_aiohttp_app_object_and_labels(make_backend: MakeBackend) -> None:
    backend = make_backend(app="examples.app:create_app", app_kind="aiohttp")
    await backend.prepare()
    inst = await backend.start("obj-1")
    status, body = await get(inst.endpoint.url + "/")
    assert (status, body) == (200, b"hello from instance obj-1\n")


async def test_warmup_runs_once_in_the_template(make_backend: MakeBackend, tmp_path: Path) -> None:
    record = tmp_path / "warmups"
    backend = make_backend(
        app="tests.backends.process.apps:create_app",
        warmup="tests.backends.process.apps:warmup",
        env={"FORKPROXY_TEST_WARMUP_LOG": str(record)},
    )
    await backend.prepare()
    a = await backend.start("warm-a")
    b = await backend.start("warm-b")
    seen = [json.loads((await get(i.endpoint.url + "/"))[1]) for i in (a, b)]
    template_pid = int(a.meta["template_pid"])
    assert record.read_text().split() == [str(template_pid)]  # once, in the template
    assert [s["warmed_in"] for s in seen] == [template_pid, template_pid]  # inherited
    assert seen[0]["pid"] != seen[1]["pid"]


async def test_children_die_with_the_template_and_it_restarts(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    backend = make_backend()
    await backend.prepare()
    started = [await backend.start(f"tpl-{i}") for i in range(2)]
    os.kill(int(started[0].meta["template_pid"]), signal.SIGKILL)
    assert await wait_all_gone([i.handle for i in started]) == []
    for inst in started:
        assert await deaths(ctx).wait_for(inst.id, 5.0) == "template_died"
    again = await backend.start("tpl-after")  # a new template is started on demand
    assert again.meta["template_pid"] != started[0].meta["template_pid"]
    assert await serves(again.endpoint.url + "/")
    assert backend.template_starts == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["fork", "exec"])
async def test_sigkilled_proxy_leaves_no_instance(ctx: BackendContext, mode: str) -> None:
    script = Path(__file__).with_name("proxy_script.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        ctx.pool_name,
        str(REPO),
        mode,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        printed = json.loads(line)
        pids = printed["pids"]
        assert len(pids) == (3 if mode == "fork" else 2)
        assert (printed["zygote"] is not None) == (mode == "fork")
        pids += [printed["zygote"]] if printed["zygote"] else []
        assert alive_pids(pids) == pids
    finally:
        proc.kill()
        await proc.wait()
    assert await wait_all_gone(pids) == []
    assert await asyncio.to_thread(scan, ctx.pool_name) == []  # spares included


async def test_leftovers_are_listed_by_pool_and_stopped(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    crashed = make_backend()  # the "earlier run": we forget it without closing it
    await crashed.prepare()
    old = [await crashed.start(f"old-{i}") for i in range(2)]
    for inst in old:  # serving: long past the fork, labelled with their ids
        assert await serves(inst.endpoint.url + "/")
    successor_ctx = recording_context(ctx.pool_name)  # same pool, new owner
    successor = make_backend(context=successor_ctx)
    found = await successor.list()
    by_id = {i.id: i for i in found}
    template = f"template-{old[0].meta['template_pid']}"
    # (A spare the old template forks right now may show up as "fork-<pid>": reaped too.)
    assert {"old-0", "old-1", template} <= set(by_id)
    assert all(i.owner_id == ctx.owner_id for i in found)
    assert [by_id[i].meta["kind"] for i in ("old-0", "old-1", template)] == [
        "fork",
        "fork",
        "template",
    ]
    for inst in found:
        await successor.stop(inst, "orphan")
    assert await wait_all_gone([i.handle for i in found]) == []
    assert await successor.list() == []
    for inst in old:
        assert not await serves(inst.endpoint.url + "/", timeout=1.0)


async def test_stop_works_on_an_instance_stuck_in_startup(make_backend: MakeBackend) -> None:
    backend = make_backend(app="examples.failing_app:never_ready", stop_grace="1s")
    await backend.prepare()
    inst = await backend.start("stuck")
    # Ready means "listening": the connection is accepted by the kernel, the app never answers.
    assert not await serves(inst.endpoint.url + "/", timeout=0.5)
    await backend.stop(inst, "test")
    assert not is_running(inst.handle)


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("examples.failing_app:create_app", "RuntimeError: example failure"),
        ("examples.no_such_module:create_app", "ModuleNotFoundError"),
        ("examples.app:no_such_factory", "AttributeError"),
        (
            "tests.backends.process.apps:threaded_app",
            r"started threads in the template \(.*app-poller",
        ),
    ],
)
async def test_app_that_cannot_be_built_fails_prepare(
    make_backend: MakeBackend, app: str, expected: str
) -> None:
    backend = make_backend(app=app)
    with pytest.raises(BackendConfigError, match=expected):
        await backend.prepare()


async def test_start_after_aclose_is_refused(make_backend: MakeBackend) -> None:
    backend = make_backend()
    await backend.prepare()
    await backend.aclose()
    with pytest.raises(Exception, match="closing"):
        await backend.start(f"late-{uuid.uuid4().hex[:6]}")


async def test_spare_fork_becomes_the_instance(make_backend: MakeBackend) -> None:
    backend = make_backend(prefork=1)
    await backend.prepare()
    await asyncio.sleep(0.3)  # the template forks its spare after a quiet spell
    inst = await backend.start("from-spare")
    assert inst.meta["prefork"] == "spare"
    status, body = await get(inst.endpoint.url + "/")
    assert (status, body) == (200, b"hello from instance from-spare\n")  # env set on assignment
    assert [i.id for i in await backend.list() if i.meta["kind"] == "fork"] == ["from-spare"]


async def test_spares_counts_the_templates_spare_processes(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    """backend.spares (what /instances and forkproxy_spares show) is the number of spare
    processes the template holds: after the refill, after one is taken, after one dies."""
    backend = make_backend(prefork=2)
    await backend.prepare()

    async def spare_pids() -> list[int]:
        return [f.pid for f in await asyncio.to_thread(scan, ctx.pool_name) if f.kind == "spare"]

    async def counted(n: int, what: str, taken: int = 0) -> list[int]:
        # a spare labels itself just after its fork, and a taken one relabels itself as its
        # instance just after the hand-over: the scan may lag the template's count either
        # way. The pids returned are the scan that agreed (a second scan could catch a new
        # spare not yet labelled).
        seen: list[int] = []

        async def agree() -> bool:
            nonlocal seen
            seen = await spare_pids()
            return backend.spares == n == len(seen) and taken not in seen

        await eventually(agree, 15.0, what)
        return seen

    first = await counted(2, "two spares forked")
    inst = await backend.start("takes-one")
    assert inst.meta["prefork"] == "spare" and int(inst.meta["pid"]) in first
    after = await counted(2, "the taken spare replaced", taken=int(inst.meta["pid"]))
    assert int(inst.meta["pid"]) not in after
    os.kill(after[0], signal.SIGKILL)  # a spare that dies unassigned is counted out, refilled
    refilled = await counted(2, "the dead spare replaced")
    assert after[0] not in refilled
    # after a third unassigned death the template stops refilling: the count must go down
    os.kill(refilled[0], signal.SIGKILL)
    again = await counted(2, "the second dead spare replaced")
    os.kill(again[0], signal.SIGKILL)
    assert await counted(1, "one spare left, no refill after three deaths") == [again[1]]
    await backend.aclose()
    assert backend.spares == 0


async def test_a_spare_primes_without_running_the_apps_code(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    """A spare sends one request through aiohttp on a throwaway app before it is assigned
    (the pages it touches are copied off the start path); the user's app, its middleware
    and handlers see only the client's request."""
    record = tmp_path / "requests"
    backend = make_backend(
        prefork=1,
        app="tests.backends.process.apps:logging_app",
        env={"FORKPROXY_TEST_REQUEST_LOG": str(record)},
    )
    await backend.prepare()
    await asyncio.sleep(0.5)  # the spare is forked, set up and primed
    inst = await backend.start("primed")
    assert inst.meta["prefork"] == "spare"
    status, _ = await get(inst.endpoint.url + "/client")
    assert status == 404  # the app has no /client: its middleware still saw it
    assert record.read_text().split("\n") == [f"{inst.meta['pid']} /client", ""]


async def test_prefork_zero_forks_on_start(make_backend: MakeBackend) -> None:
    backend = make_backend(prefork=0)
    await backend.prepare()
    await asyncio.sleep(0.1)
    inst = await backend.start("direct")
    assert inst.meta["prefork"] == "forked on start"
    assert await serves(inst.endpoint.url + "/")


async def test_aclose_leaves_no_process_not_even_spares(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    backend = make_backend(prefork=2)
    await backend.prepare()
    await backend.start("one")
    await asyncio.sleep(0.3)
    kinds = sorted(f.kind for f in await asyncio.to_thread(scan, ctx.pool_name))
    assert kinds == ["fork", "spare", "spare", "template"]
    await backend.aclose()
    assert await asyncio.to_thread(scan, ctx.pool_name) == []


async def test_stopping_the_listed_template_reports_its_children(
    make_backend: MakeBackend, ctx: BackendContext
) -> None:
    backend = make_backend()
    await backend.prepare()
    kids = [await backend.start(f"kid-{i}") for i in range(2)]
    template = next(i for i in await backend.list() if i.meta["kind"] == "template")
    await backend.stop(template, "orphan")
    for kid in kids:
        assert await deaths(ctx).wait_for(kid.id, 5.0)
        t0 = time.monotonic()
        await backend.stop(kid, "test")  # already gone: returns at once
        assert time.monotonic() - t0 < 1.0
    again = await backend.start("after-template-stop")
    assert await serves(again.endpoint.url + "/")


async def test_sigterm_right_after_the_fork_is_not_lost(make_backend: MakeBackend) -> None:
    """The pool may drain an instance the moment it is started (a burst already absorbed).
    Its SIGTERM can land before the child has dropped the template's SIGTERM handler; that
    signal must still end it, not be swallowed until stop_grace runs out and SIGKILL."""
    backend = make_backend(app="examples.app:create_app", stop_grace="3s")
    await backend.prepare()
    slow: list[float] = []
    for round_ in range(12):
        insts = await asyncio.gather(*(backend.start(f"t{round_}-{i}") for i in range(4)))
        t0 = time.monotonic()
        await asyncio.gather(*(backend.stop(inst, "test") for inst in insts))
        if time.monotonic() - t0 > 1.5:
            slow.append(time.monotonic() - t0)
        assert not alive_pids([inst.handle for inst in insts])
    assert not slow, f"stops that waited for SIGKILL: {slow}"
