"""The budget's I/O half over stand-in pools: what it gives back, the promise a reclaim
makes, and the wake-up when room is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from forkproxy.proxy.budget import BudgetConfig, Held
from forkproxy.proxy.config import PoolConfig
from forkproxy.proxy.generation import Generation
from forkproxy.proxy.machine import Machine
from forkproxy.proxy.templates_memory import Templates


@dataclass
class FakePool:
    held: list[Held]
    cfg: PoolConfig = field(default_factory=PoolConfig)
    given_back: list[tuple[str, str]] = field(default_factory=list)
    woken: int = 0
    stopped_hooks: list[Any] = field(default_factory=list)
    admit_start: Any = None
    measure_memory: bool = False
    templates: Templates = field(default_factory=Templates)

    def budget_load(self) -> tuple[tuple[Held, ...], float]:
        return tuple(self.held), 0.05

    def memory_held(self) -> tuple[int | None, int | None]:
        sizes = [h.memory for h in self.held if h.memory]
        return (sum(sizes) if sizes else None), self.templates.bytes

    def give_back(self, instance_id: str, reason: str) -> None:
        self.given_back.append((instance_id, reason))
        self.held = [
            Held(h.id, "stopping", h.memory) if h.id == instance_id else h for h in self.held
        ]

    def wake(self) -> None:
        self.woken += 1

    def stopped(self, instance_id: str) -> None:
        self.held = [h for h in self.held if h.id != instance_id]
        for hook in self.stopped_hooks:
            hook()


@dataclass
class FakeGen:
    pool: FakePool
    requests: int = 0


def machine(
    max_instances: int, max_memory: int = 0, **pools: FakePool
) -> tuple[Machine, dict[str, Any]]:
    gens = {name: FakeGen(p) for name, p in pools.items()}
    cfg = BudgetConfig(max_instances=max_instances, max_memory=max_memory)
    m = Machine(cfg, lambda: cast(Any, gens))
    for name, g in gens.items():
        m.attach(name, cast(Generation, g))
    return m, gens


def test_evicts_then_wakes_the_waiting_app_when_the_instance_is_gone() -> None:
    a, b = FakePool([Held("a1", "idle")]), FakePool([])
    machine(1, a=a, b=b)
    assert b.admit_start is not None and not b.admit_start()
    assert a.given_back == [("a1", "budget")]
    assert not b.admit_start()  # still stopping: nothing more is evicted
    assert a.given_back == [("a1", "budget")]
    a.stopped("a1")
    assert b.woken == 1 and a.woken == 0
    assert b.admit_start()
    a.stopped_hooks[0]()  # admitted: no longer waiting, not woken again
    assert b.woken == 1


def test_no_budget_asks_nothing() -> None:
    m, _ = machine(0, a=FakePool([]))
    assert m.cfg.enabled is False


def test_a_reclaim_promises_the_room_to_the_app_it_was_made_for() -> None:
    a = FakePool([Held(f"a{i}", "busy") for i in range(4)])
    b = FakePool([])
    machine(4, a=a, b=b)
    assert not b.admit_start()
    assert a.given_back == [("a0", "budget_share")]
    a.stopped("a0")
    assert not a.admit_start()  # the room is b's
    assert b.admit_start()
    b.held.append(Held("b1", "starting"))  # as the pool does at once
    assert not a.admit_start()  # full again, and a holds more than its share


def test_max_memory_measures_every_pool_and_counts_templates() -> None:
    mib = 1024 * 1024
    a = FakePool([Held("a1", "idle", 100 * mib)])
    a.templates.bytes = 200 * mib  # a's template, measured
    b = FakePool([])
    m, _ = machine(0, max_memory=350 * mib, a=a, b=b)
    assert a.measure_memory and b.measure_memory
    # 100 + 200 held, b's first instance priced at the mean (100): over by 50
    assert not m.admit("b")
    assert a.given_back == [("a1", "budget")]
    assert m.usage() == {
        "max_instances": 0,
        "max_memory": 350 * mib,
        "instances": 0,  # a1 is being stopped
        "memory": 300 * mib,  # it holds its memory until gone
    }
    plain, _ = machine(2, a=FakePool([]))
    assert not plain.usage()["memory"]
