"""TaskSet, the one owner of background tasks: aclose() cancels, join() lets them finish;
and no module makes a task any other way (ruff's banned-api sees `asyncio.create_task`
but not `loop.create_task` or `get_running_loop().create_task`, so this test does)."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

from forkproxy.backends.support.tasks import TaskSet
from tests.conftest import ROOT

OWNER = ROOT / "backends/support/tasks.py"
SPAWNERS = {"create_task", "ensure_future"}


async def test_aclose_cancels_and_awaits() -> None:
    tasks = TaskSet("t")
    started = asyncio.Event()
    cancelled = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    tasks.spawn(forever(), "forever")
    await started.wait()
    await tasks.aclose()
    assert cancelled == [True]
    assert len(tasks) == 0


async def test_join_lets_running_tasks_finish_and_takes_no_new_ones() -> None:
    tasks = TaskSet("t")
    done: list[str] = []

    async def work(name: str, secs: float) -> None:
        await asyncio.sleep(secs)
        done.append(name)

    tasks.spawn(work("a", 0.05), "a")
    tasks.spawn(work("b", 0.1), "b")
    await tasks.join()
    assert sorted(done) == ["a", "b"]  # finished, not cancelled
    late = work("late", 0)
    assert tasks.spawn(late, "late") is None  # closed: the coroutine is closed, not run
    assert inspect.getcoroutinestate(late) == "CORO_CLOSED"


def _spawns(path: Path) -> list[str]:
    """Calls that make a task outside a TaskSet or a TaskGroup (`async with
    asyncio.TaskGroup() as tg: tg.create_task(...)`), unless the line says why with
    `# noqa: TID251` (the marker the ruff ban honours too)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    groups = {
        item.optional_vars.id
        for node in ast.walk(tree)
        if isinstance(node, ast.With | ast.AsyncWith)
        for item in node.items
        if isinstance(item.optional_vars, ast.Name)
        and isinstance(item.context_expr, ast.Call)
        and ast.unparse(item.context_expr.func).endswith("TaskGroup")
    }
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in SPAWNERS:
            continue
        receiver = node.func.value
        if isinstance(receiver, ast.Name) and receiver.id in groups:
            continue
        if "noqa: TID251" in lines[node.lineno - 1]:
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node.func)}")
    return found


def test_every_task_is_owned() -> None:
    files = [
        p
        for top in ("proxy", "backends", "loadtest", "examples")
        for p in sorted((ROOT / top).rglob("*.py"))
        if p != OWNER
    ]
    assert files
    offenders = [hit for p in files for hit in _spawns(p)]
    assert offenders == [], "spawn through forkproxy.backends.support.tasks.TaskSet:\n" + "\n".join(
        offenders
    )
