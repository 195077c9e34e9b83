"""Waiting on vCenter the way vCenter wants: a private PropertyCollector, filters on the
objects of interest and a WaitForUpdatesEx version loop, so a wait costs the same few SOAP
calls however long it lasts (no polling). Blocking: call from a thread."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from forkproxy.backends.vsphere.sdk import vim, vmodl

# One WaitForUpdatesEx round blocks at most this long (the socket timeout is longer).
MAX_ROUND = 20


class WaitTimeout(Exception):
    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__("timed out")
        self.values = values  # what was seen, for the error message


class Watcher:
    """A private PropertyCollector. `watch(obj, props)` adds a filter; `until(pred)`
    returns the accumulated {"<moref>.<prop>": value} once pred holds. Destroy on exit."""

    def __init__(self, content: Any) -> None:
        self.pc = content.propertyCollector.CreatePropertyCollector()
        self.version = ""
        self.values: dict[str, Any] = {}
        self.gone: set[str] = set()  # objects that left the inventory

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # A gone session took the collector with it.
        with contextlib.suppress(vmodl.fault.ManagedObjectNotFound, vim.fault.NotAuthenticated):
            self.pc.DestroyPropertyCollector()

    def watch(self, obj: Any, props: list[str]) -> None:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=props)],
        )
        self.pc.CreateFilter(spec, partialUpdates=True)
        # Restart from version "": the next round returns the full current state of every
        # filter. vCenter would report the new filter's state anyway; vcsim only reports
        # changes made after it, and a change may already have happened.
        self.version = ""

    def until(self, done: Callable[[Watcher], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not done(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(dict(self.values))
            # maxWaitSeconds is whole seconds; a round ends early on any update.
            rounds = max(1, min(MAX_ROUND, int(remaining + 0.999)))
            options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=rounds)
            update = self.pc.WaitForUpdatesEx(self.version, options)
            if update is None:  # the round timed out with no change
                continue
            self.version = update.version
            for fs in update.filterSet or []:
                for obj_update in fs.objectSet or []:
                    self._apply(obj_update)
        return dict(self.values)

    def _apply(self, obj_update: Any) -> None:
        ref = obj_update.obj._moId
        if obj_update.kind == "leave":
            self.gone.add(ref)
            return
        for change in obj_update.changeSet or []:
            key = f"{ref}.{change.name}"
            if change.op in ("remove", "indirectRemove"):
                self.values.pop(key, None)
            else:
                self.values[key] = change.val

    def get(self, obj: Any, prop: str) -> Any:
        return self.values.get(f"{obj._moId}.{prop}")


TASK_PROPS = ["info.state", "info.result", "info.error"]


def task_done(task: Any) -> Callable[[Watcher], bool]:
    return lambda w: w.get(task, "info.state") in ("success", "error")


def wait_task(w: Watcher, task: Any, timeout: float) -> Any:
    """The task's result; its fault is raised as the vim/vmodl exception it is."""
    w.watch(task, TASK_PROPS)
    w.until(task_done(task), timeout)
    if w.get(task, "info.state") == "error":
        error = w.get(task, "info.error")
        raise (
            error.fault
            if error is not None and error.fault is not None
            else RuntimeError(f"task {task._moId} failed without a fault")
        )
    return w.get(task, "info.result")
