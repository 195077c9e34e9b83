"""One budget for the machine, pure: a snapshot of every app's instances in, which idle
instances to give back (and, under contention, which busy ones to drain) out, so one
more start fits. No I/O, no clock: unit-tested directly, like proxy/policy.py.

Who gives back first (FaasCache's greedy-dual idea): an app's priority is
request frequency x start cost / memory per instance. A rarely used app that starts in
5 ms and holds 200 MB is the cheapest to bring back, so its idle instances go first;
a busy app whose instances take seconds to start keeps its own. Two rules on top:
- never below an app's min_instances, never the asking app's own instances;
- a fair share (max_instances, and max_memory, / the apps contending): apps above their
  share give first; and an app below its share, blocked by busy instances of apps above theirs,
  has one of those drained (it finishes its requests, takes no new ones) instead of
  waiting for a load that may never drop. An app at or above its share waits when no
  idle instance can make room (idle capacity is lent past the share: work-conserving).
Instances being stopped count until they are gone (the cap is hard: it is memory), but
as room on its way: no more is evicted for them, the start waits for them. So a start
that needs an eviction is answered "not yet" and asked again (the pool's next tick).

Memory is what was measured (PSS): each instance's, and each app's templates (a fork
template, its spares) as `AppLoad.fixed_memory`, which counts against max_memory and
the app's share but is never given back here. An instance not measured yet (starting)
is priced at the mean of those measured; with nothing measured anywhere, max_memory
cannot be judged and only max_instances applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

State = Literal["starting", "idle", "busy", "stopping"]


@dataclass(frozen=True)
class BudgetConfig:
    max_instances: int = 0  # across every app; 0: no cap
    max_memory: int = 0  # bytes across every app's instances (PSS, when measured); 0: no cap

    @property
    def enabled(self) -> bool:
        return bool(self.max_instances or self.max_memory)


@dataclass(frozen=True)
class Held:
    id: str
    state: State
    memory: int = 0  # bytes; 0: not measured


@dataclass(frozen=True)
class AppLoad:
    name: str
    instances: tuple[Held, ...]
    start_cost: float = 0.05  # measured seconds from start to ready
    frequency: float = 0.0  # requests per second, recent
    min_instances: int = 0
    fixed_memory: int = 0  # bytes held outside instances (templates), measured

    @property
    def held(self) -> list[Held]:
        return [i for i in self.instances if i.state != "stopping"]

    @property
    def memory_each(self) -> int:
        """Mean measured memory of its instances; 0 when none is measured."""
        known = [i.memory for i in self.held if i.memory]
        return sum(known) // len(known) if known else 0

    def priority(self, default_memory: int) -> float:
        memory = self.memory_each or default_memory or 1
        # a little frequency even for an app never asked: start cost still orders them
        return (self.frequency + 1e-3) * self.start_cost / memory


@dataclass(frozen=True)
class Verdict:
    admit: bool  # the start may go ahead now
    evict: tuple[tuple[str, str], ...] = ()  # (app, instance id): idle, stop now
    reclaim: tuple[tuple[str, str], ...] = ()  # (app, instance id): busy, drain then stop
    reason: str = ""


def fair_share(cfg: BudgetConfig, apps: Sequence[AppLoad], asking: str) -> int:
    """Instances each contending app (holding some, or asking now) may count on."""
    contending = {a.name for a in apps if a.held} | {asking}
    return max(1, cfg.max_instances // len(contending)) if cfg.max_instances else 0


def memory_share(cfg: BudgetConfig, apps: Sequence[AppLoad], asking: str) -> int:
    """Bytes each contending app may count on (its templates included)."""
    contending = {a.name for a in apps if a.held} | {asking}
    return cfg.max_memory // len(contending) if cfg.max_memory else 0


def admit(
    cfg: BudgetConfig,
    apps: Sequence[AppLoad],
    asking: str,
    reserved: Mapping[str, int] | None = None,
) -> Verdict:
    """Whether app `asking` may start one more instance, and what must make room.
    `reserved`: instances promised to apps that had busy ones reclaimed for them; they
    count as held for every other app, so the room drained for one is not taken by
    another (the app it was drained from, above all)."""
    if not cfg.enabled:
        return Verdict(True)
    by_name = {a.name: a for a in apps}
    me = by_name.get(asking, AppLoad(asking, ()))
    counts = {a.name: len(a.held) for a in apps}
    counts.setdefault(asking, 0)
    promised = sum(n for app, n in (reserved or {}).items() if app != asking)
    measured = [a.memory_each for a in apps if a.memory_each]
    default_mem = sum(measured) // len(measured) if measured else 0
    need_mem = me.memory_each or default_mem
    # bytes per app: its instances (unmeasured ones at the mean) and its templates
    mem = {a.name: a.fixed_memory + sum(i.memory or default_mem for i in a.held) for a in apps}
    mem.setdefault(asking, 0)
    leaving = [i for a in apps for i in a.instances if i.state == "stopping"]
    leaving_mem = sum(i.memory or default_mem for i in leaving)

    def over(extra: int = 0, extra_mem: int = 0) -> tuple[int, int]:
        held = sum(counts.values()) + promised + extra
        n = held + 1 - cfg.max_instances if cfg.max_instances else 0
        # room drained for another app is held for it in memory as in instances
        used = sum(mem.values()) + promised * default_mem + extra_mem + need_mem
        m = used - cfg.max_memory if cfg.max_memory and need_mem else 0
        return n, m

    if max(over(len(leaving), leaving_mem)) <= 0:
        return Verdict(True)
    if max(over()) <= 0:
        return Verdict(False, reason="waiting for instances being stopped")
    share = fair_share(cfg, apps, asking)
    mem_share = memory_share(cfg, apps, asking)

    def above_share(name: str) -> bool:
        return bool(
            (cfg.max_instances and counts[name] > share)
            or (cfg.max_memory and need_mem and mem[name] > mem_share)
        )

    under_share = not (
        (cfg.max_instances and counts[asking] >= share)
        or (cfg.max_memory and need_mem and mem[asking] + need_mem > mem_share)
    )

    def order(a: AppLoad) -> tuple[bool, float, int]:
        # apps above their share first, then the cheapest to bring back, then the larger
        return (not above_share(a.name), a.priority(default_mem), -counts[a.name])

    def givers(state: State) -> list[tuple[AppLoad, list[Held]]]:
        out = []
        for a in apps:
            if a.name == asking:
                continue
            room = counts[a.name] - a.min_instances
            ready = [i for i in a.held if i.state == state]
            if room > 0 and ready:
                out.append((a, ready))
        return out

    taken: set[str] = set()

    def give_back(
        candidates: list[tuple[AppLoad, list[Held]]], only_above_share: bool = False
    ) -> tuple[tuple[str, str], ...]:
        """Instances taken from `candidates`, next first, until the start fits."""
        out: list[tuple[str, str]] = []
        while max(over()) > 0:
            best: tuple[AppLoad, Held] | None = None
            for a, held in candidates:
                if counts[a.name] <= a.min_instances:
                    continue
                if only_above_share and not above_share(a.name):
                    continue  # a reclaim never takes an app below its fair share
                free = [i for i in held if i.id not in taken]
                if free and (best is None or order(a) < order(best[0])):
                    best = (a, free[0])
            if best is None:
                break
            a, inst = best
            out.append((a.name, inst.id))
            taken.add(inst.id)
            counts[a.name] -= 1
            mem[a.name] -= inst.memory or default_mem
        return tuple(out)

    evict = give_back(givers("idle"))
    if max(over()) <= 0:
        return Verdict(False, evict, reason="idle instances of other apps give back")
    if not under_share:
        # at its share: its own instances free up for its queue; evicting others' idle
        # ones would not let it start anyway
        return Verdict(False, reason=f"budget full; {asking} holds its fair share")
    above = [(a, held) for a, held in givers("busy") if above_share(a.name)]
    reclaim = give_back(above, only_above_share=True)
    return Verdict(
        False,
        evict,
        reclaim,
        reason="budget held by busy instances" + (" of apps above their share" if reclaim else ""),
    )
