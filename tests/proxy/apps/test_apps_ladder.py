"""Two fork-mode apps behind one proxy, both scaled to zero and past template_idle_ttl:
neither holds a process (no instance, no template), only the proxy's shared zygote is
left, and each app's next request climbs back and is answered."""

from __future__ import annotations

import os
from typing import Any

from forkproxy.backends.process import _zygote_client
from forkproxy.backends.process._procfs import all_pids, proc_state
from tests.conftest import eventually
from tests.proxy.apps.test_apps_e2e import Client, config, running


def descendants(root: int) -> set[int]:
    """Every live process under `root`, by /proc."""
    parents: dict[int, list[int]] = {}
    for pid in all_pids():
        state = proc_state(pid)
        if state is not None and state[0] not in ("Z", "X"):
            parents.setdefault(state[1], []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def ladder_config() -> dict[str, Any]:
    cfg = config("200ms")
    for app in cfg["apps"].values():
        app["backend"]["template_idle_ttl"] = "300ms"
    return cfg


async def test_two_idle_apps_hold_no_process_and_climb_back() -> None:
    before = descendants(os.getpid())  # (nothing of this test's)
    async with running(ladder_config()) as c:
        assert await c.get("shop.test") == (200, "shop /")
        assert await c.get("blog.test", "/blog/p") == (200, "blog /blog/p")
        zygote = _zygote_client.running()
        assert zygote is not None
        await eventually(
            lambda: descendants(os.getpid()) - before == {zygote.pid}, 20.0, "only the zygote left"
        )
        status, body = await c.admin("/instances")
        assert status == 200 and body["instances"] == []
        for app in ("shop", "blog"):
            rungs = body["ladder"][app]
            assert rungs["template_up"] is False and rungs["template_give_backs"] >= 1
            assert rungs["template_start_s"] > 0 and rungs["fork_s"] > 0
            assert rungs["zygote"]["pid"] == zygote.pid
        assert await c.get("shop.test", "/again") == (200, "shop /again")
        assert await c.get("blog.test", "/blog/p") == (200, "blog /blog/p")
        await ready_ladders(c)
    await eventually(lambda: descendants(os.getpid()) - before == set(), 10.0, "nothing left")


async def ready_ladders(c: Client) -> None:
    _, body = await c.admin("/instances")
    assert all(body["ladder"][app]["template_up"] for app in ("shop", "blog"))
