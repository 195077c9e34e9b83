"""The machine's budget at work (the pure rule is proxy/budget.py): before an app's
pool starts an instance it asks here; this reads every app's pool, asks the rule, and
has the instances it names given back (drained, then stopped)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from forkproxy.proxy import budget
from forkproxy.proxy.budget import AppLoad, BudgetConfig

if TYPE_CHECKING:
    from forkproxy.proxy.generation import Generation

log = logging.getLogger("forkproxy.budget")
RATE_WINDOW = 1.0  # seconds between request-rate samples


class _Rate:
    """Requests per second of one app, smoothed over samples at least RATE_WINDOW apart."""

    def __init__(self, now: float, count: int) -> None:
        self.at, self.count, self.value = now, count, 0.0

    def update(self, now: float, count: int) -> float:
        if now - self.at >= RATE_WINDOW:
            fresh = max(0, count - self.count) / (now - self.at)
            self.value = fresh if not self.value else (self.value + fresh) / 2
            self.at, self.count = now, count
        return self.value


class Machine:
    def __init__(
        self,
        cfg: BudgetConfig,
        gens: Callable[[], Mapping[str, Generation]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._gens = gens
        self._clock = clock
        self._rates: dict[str, _Rate] = {}
        # app -> (instances promised by a reclaim, until when the promise holds)
        self._reserved: dict[str, tuple[int, float]] = {}
        self.last: budget.Verdict | None = None  # the latest refusal (tests, logs)
        self._waiting: set[str] = set()  # apps refused a start: woken when room is made

    def attach(self, app: str, gen: Generation) -> None:
        gen.pool.admit_start = (lambda: self.admit(app)) if self.cfg.enabled else None
        # the budget's memory is measured, every second, not guessed
        gen.pool.measure_memory = bool(self.cfg.max_memory)
        if self._room_made not in gen.pool.stopped_hooks:
            gen.pool.stopped_hooks.append(self._room_made)

    def _room_made(self) -> None:
        """An instance is gone: the apps refused a start ask again now, not a tick later."""
        gens = self._gens()
        for app in self._waiting:
            if app in gens:
                gens[app].pool.wake()

    def loads(self) -> list[AppLoad]:
        now = self._clock()
        out = []
        for name, gen in self._gens().items():
            held, cost = gen.pool.budget_load()
            rate = self._rates.get(name)
            if rate is None:
                rate = self._rates[name] = _Rate(now, gen.requests)
            out.append(
                AppLoad(
                    name,
                    held,
                    start_cost=cost,
                    frequency=rate.update(now, gen.requests),
                    min_instances=gen.pool.cfg.min_instances,
                    fixed_memory=gen.pool.templates.bytes or 0,
                )
            )
        return out

    def usage(self) -> dict[str, Any]:
        """What every app holds against the budget (the live page, the metrics):
        instances not being stopped, and measured memory (instances and templates;
        None when nothing is measured)."""
        instances = 0
        memory: int | None = None
        for gen in self._gens().values():
            held, _ = gen.pool.budget_load()
            instances += sum(1 for i in held if i.state != "stopping")
            for part in gen.pool.memory_held():
                if part is not None:
                    memory = (memory or 0) + part
        return {
            "max_instances": self.cfg.max_instances,
            "max_memory": self.cfg.max_memory,
            "instances": instances,
            "memory": memory,
        }

    def admit(self, app: str) -> bool:
        now = self._clock()
        self._reserved = {k: v for k, v in self._reserved.items() if v[1] > now}
        promised = {k: n for k, (n, _) in self._reserved.items()}
        verdict = budget.admit(self.cfg, self.loads(), app, promised)
        if verdict.admit:
            self._waiting.discard(app)
            if (held := self._reserved.pop(app, None)) is not None and held[0] > 1:
                self._reserved[app] = (held[0] - 1, held[1])
            return True
        self._waiting.add(app)
        gens = self._gens()
        if verdict.reclaim and app in gens:
            # the promise lasts as long as its requests may wait for it
            until = now + gens[app].pool.cfg.hold_timeout
            self._reserved[app] = (promised.get(app, 0) + len(verdict.reclaim), until)
        for reason, names in (("budget", verdict.evict), ("budget_share", verdict.reclaim)):
            for owner, instance_id in names:
                log.info("budget: %s gives back %s for %s (%s)", owner, instance_id, app, reason)
                gens[owner].pool.give_back(instance_id, reason)
        if verdict != self.last:
            log.debug("budget: %s waits: %s", app, verdict.reason)
        self.last = verdict
        return False
