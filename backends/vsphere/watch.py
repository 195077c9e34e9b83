"""Death detection for vsphere clones: one thread holds a private PropertyCollector with a
filter on runtime.powerState of every live clone and reports power-offs and removals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from forkproxy.backends.vsphere.sdk import vim, vmodl
from forkproxy.backends.vsphere.session import Session
from forkproxy.backends.vsphere.wait import MAX_ROUND

log = logging.getLogger("forkproxy.backend.vsphere")

_REASONS = {"poweredOff": "powered_off", "suspended": "suspended"}


class DeathWatch:
    """`add(id, vm)` / `remove(id)` from the event loop; `callback(id, reason)` is called on
    the loop. The thread blocks in WaitForUpdatesEx; CancelWaitForUpdates wakes it."""

    def __init__(self, session: Session, callback: Callable[[str, str], None]) -> None:
        self.session = session
        self.callback = callback
        self._lock = threading.Lock()
        self._watched: dict[str, Any] = {}  # id → vm
        self._dirty = True  # filters differ from _watched
        self._filters: dict[str, Any] = {}  # id → PropertyFilter (thread only)
        self._by_moid: dict[str, str] = {}
        self._pc: Any = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[None] | None = None
        # Its own thread: the loop's default executor is small (cores + 4) and shared.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsphere-watch")
        self._wakes: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"<DeathWatch {len(self._watched)} clones>"

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.run_in_executor(self._thread, self._run)

    def add(self, instance_id: str, vm: Any) -> None:
        with self._lock:
            self._watched[instance_id] = vm
            self._dirty = True
        self._wake()

    def remove(self, instance_id: str) -> None:
        with self._lock:
            if self._watched.pop(instance_id, None) is not None:
                self._dirty = True  # applied at the next round; events for it are ignored

    def _wake(self) -> None:
        if self._loop is None:
            return
        fut = self._loop.run_in_executor(None, self._cancel_wait)
        self._wakes.add(fut)
        fut.add_done_callback(self._wakes.discard)

    def _cancel_wait(self) -> None:
        pc = self._pc
        if pc is not None:
            with contextlib.suppress(vmodl.MethodFault, OSError):
                pc.CancelWaitForUpdates()

    async def aclose(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._cancel_wait)
        for fut in [*self._wakes, *([self._task] if self._task else [])]:
            with contextlib.suppress(Exception):
                await fut
        self._thread.shutdown(wait=False)

    # -- the thread ------------------------------------------------------------------------

    def _emit(self, instance_id: str, reason: str) -> None:
        with self._lock:
            if self._watched.pop(instance_id, None) is None:
                return  # removed (being stopped) meanwhile
            self._dirty = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.callback, instance_id, reason)

    def _sync_filters(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            wanted = dict(self._watched)
            self._dirty = False
        for instance_id in [i for i in self._filters if i not in wanted]:
            self._by_moid = {m: i for m, i in self._by_moid.items() if i != instance_id}
            with contextlib.suppress(vmodl.MethodFault):
                self._filters.pop(instance_id).DestroyPropertyFilter()
        pc = vmodl.query.PropertyCollector
        for instance_id, vm in wanted.items():
            if instance_id in self._filters:
                continue
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=vm, skip=False)],
                propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.powerState"])],
            )
            self._filters[instance_id] = self._pc.CreateFilter(spec, partialUpdates=True)
            self._by_moid[vm._moId] = instance_id

    def _run(self) -> None:
        version = ""
        try:
            while not self._stop.is_set():
                try:
                    if self._pc is None:
                        self._pc = self.session.call(
                            lambda content: content.propertyCollector.CreatePropertyCollector()
                        )
                        version = ""
                        self._filters.clear()
                        with self._lock:
                            self._dirty = True
                    self._sync_filters()
                    options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=MAX_ROUND)
                    update = self._pc.WaitForUpdatesEx(version, options)
                except vmodl.fault.RequestCanceled:
                    continue  # woken by add() or aclose()
                except (vim.fault.NotAuthenticated, vmodl.fault.ManagedObjectNotFound):
                    self._pc = None  # the session (and its collector) went away: rebuild
                    continue
                except Exception as exc:
                    log.warning("vsphere: death watch error, retrying in 1s: %s", exc)
                    self._pc = None
                    self._stop.wait(1.0)
                    continue
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet or []:
                    for ou in fs.objectSet or []:
                        self._handle(ou)
        finally:
            if self._pc is not None:
                with contextlib.suppress(Exception):
                    self._pc.DestroyPropertyCollector()

    def _handle(self, ou: Any) -> None:
        instance_id = self._by_moid.get(ou.obj._moId)
        if instance_id is None:
            return
        if ou.kind == "leave":
            self._emit(instance_id, "vm_removed")
            return
        for change in ou.changeSet or []:
            if change.name == "runtime.powerState" and change.val in _REASONS:
                self._emit(instance_id, _REASONS[change.val])
