"""The machine's budget as a pure function: which idle instances of which apps give
back so a start fits, in FaasCache order, never below a floor, no app starving another."""

from __future__ import annotations

from forkproxy.proxy.budget import AppLoad, BudgetConfig, Held, Verdict, admit, fair_share

MiB = 1024 * 1024


def idle(*ids: str, memory: int = 0) -> tuple[Held, ...]:
    return tuple(Held(i, "idle", memory) for i in ids)


def busy(*ids: str) -> tuple[Held, ...]:
    return tuple(Held(i, "busy") for i in ids)


def app(name: str, *held: Held, freq: float = 1.0, cost: float = 0.05, floor: int = 0) -> AppLoad:
    return AppLoad(name, held, start_cost=cost, frequency=freq, min_instances=floor)


def test_no_budget_or_room_admits_without_evicting() -> None:
    apps = [app("a", *idle("a1")), app("b")]
    assert admit(BudgetConfig(), apps, "b") == Verdict(True)
    assert admit(BudgetConfig(max_instances=2), apps, "b") == Verdict(True)


def test_an_idle_instance_of_another_app_makes_room() -> None:
    apps = [app("a", *idle("a1")), app("b")]
    v = admit(BudgetConfig(max_instances=1), apps, "b")
    assert not v.admit and v.evict == (("a", "a1"),) and not v.reclaim
    # asked again while it stops: no more evicted, the start waits; once gone, it fits
    apps = [app("a", Held("a1", "stopping"), *idle("a2")), app("b")]
    assert admit(BudgetConfig(max_instances=2), apps, "b") == Verdict(
        False, reason="waiting for instances being stopped"
    )
    assert admit(BudgetConfig(max_instances=1), [app("a"), app("b")], "b") == Verdict(True)


def test_cheapest_to_bring_back_goes_first() -> None:
    # priority = frequency x start cost / memory: lowest first
    apps = [
        app("hot", *idle("h1"), freq=50.0),
        app("slow", *idle("s1"), cost=3.0),  # a VM clone: dear to bring back
        app("rare", *idle("r1"), freq=0.1),
        app("new"),
    ]
    cfg = BudgetConfig(max_instances=3)
    assert admit(cfg, apps, "new").evict == (("rare", "r1"),)
    cfg = BudgetConfig(max_instances=2)
    assert admit(cfg, apps, "new").evict == (("rare", "r1"), ("hot", "h1"))


def test_memory_weighs_in() -> None:
    apps = [
        app("small", *idle("s1", memory=20 * MiB)),
        app("big", *idle("b1", memory=400 * MiB)),  # same use, 20x the memory
        app("new"),
    ]
    assert admit(BudgetConfig(max_instances=2), apps, "new").evict == (("big", "b1"),)


def test_max_memory_evicts_until_the_start_fits() -> None:
    apps = [
        app("a", *idle("a1", "a2", memory=100 * MiB)),
        app("b", *idle("b1", memory=100 * MiB)),
    ]
    v = admit(BudgetConfig(max_memory=350 * MiB), apps, "b")
    assert not v.admit and len(v.evict) == 1 and v.evict[0][0] == "a"
    assert admit(BudgetConfig(max_memory=1000 * MiB), apps, "b") == Verdict(True)


def test_never_below_min_instances_nor_the_asking_apps_own() -> None:
    apps = [app("a", *idle("a1", "a2"), floor=2), app("b", *idle("b1"))]
    v = admit(BudgetConfig(max_instances=3), apps, "b")
    assert not v.admit and not v.evict and not v.reclaim


def test_stopping_instances_count_until_gone() -> None:
    apps = [app("a", Held("a1", "stopping")), app("b")]
    assert not admit(BudgetConfig(max_instances=1), apps, "b").admit
    assert admit(BudgetConfig(max_instances=2), apps, "b") == Verdict(True)


def test_starting_instances_count_and_are_never_evicted() -> None:
    apps = [app("a", Held("a1", "starting")), app("b")]
    v = admit(BudgetConfig(max_instances=1), apps, "b")
    assert not v.admit and not v.evict


def test_apps_above_their_share_give_first() -> None:
    # a: 3 of 4 (share 2 with two apps), rarely used; c at its share, used even less:
    # a gives first all the same
    apps = [
        app("a", *idle("a1", "a2", "a3"), freq=5.0),
        app("c", *idle("c1"), freq=0.01),
        app("b"),
    ]
    v = admit(BudgetConfig(max_instances=4), apps, "b")
    assert v.evict == (("a", "a1"),)


def test_a_starved_app_reclaims_from_a_busy_app_above_its_share() -> None:
    apps = [app("a", *busy("a1", "a2", "a3", "a4"), freq=100.0), app("b")]
    cfg = BudgetConfig(max_instances=4)
    assert fair_share(cfg, apps, "b") == 2
    v = admit(cfg, apps, "b")
    assert not v.admit and not v.evict and len(v.reclaim) == 1 and v.reclaim[0][0] == "a"


def test_an_app_at_its_share_waits() -> None:
    apps = [app("a", *busy("a1", "a2")), app("b", *busy("b1", "b2"))]
    v = admit(BudgetConfig(max_instances=4), apps, "b")
    assert v == Verdict(False, reason=v.reason) and "fair share" in v.reason


def test_idle_capacity_is_lent_beyond_the_share_and_reclaimed() -> None:
    # work-conserving: b past its share may take a's idle instance ...
    apps = [app("a", *idle("a1", "a2")), app("b", *busy("b1", "b2"))]
    assert admit(BudgetConfig(max_instances=4), apps, "b").evict == (("a", "a1"),)
    # ... and a, back below its share, gets one of b's back
    apps = [app("a", *busy("a2")), app("b", *busy("b1", "b2", "b3"))]
    v = admit(BudgetConfig(max_instances=4), apps, "a")
    assert not v.admit and v.reclaim == (("b", "b1"),)


def test_the_only_app_may_take_the_whole_budget() -> None:
    apps = [app("a", *busy("a1", "a2", "a3"))]
    assert admit(BudgetConfig(max_instances=4), apps, "a").admit
    apps = [app("a", *busy("a1", "a2", "a3", "a4"))]
    assert not admit(BudgetConfig(max_instances=4), apps, "a").admit


def test_idle_first_then_reclaim_for_the_rest() -> None:
    apps = [
        app("a", *busy("a1", "a2", "a3"), *idle("a4"), freq=100.0),
        app("c", *busy("c1")),
        app("b"),
    ]
    # share 5 // 3 = 1; full at 5: a's idle one goes; one more instance fits
    v = admit(BudgetConfig(max_instances=5), apps, "b")
    assert v.evict == (("a", "a4"),) and not v.reclaim
    v = admit(BudgetConfig(max_instances=4), apps, "b")
    assert not v.admit and v.evict == (("a", "a4"),) and v.reclaim[0][0] == "a"


def test_room_reclaimed_for_one_app_is_not_taken_by_another() -> None:
    # a's busy instance a4 is draining for b: a, asking again, waits; b gets the room
    apps = [app("a", *busy("a1", "a2", "a3"), Held("a4", "stopping")), app("b")]
    cfg = BudgetConfig(max_instances=4)
    assert not admit(cfg, apps, "a", {"b": 1}).admit
    apps = [app("a", *busy("a1", "a2", "a3")), app("b")]
    assert not admit(cfg, apps, "a", {"b": 1}).admit
    assert admit(cfg, apps, "b", {"b": 1}).admit


# -- max_memory: measured memory, templates included ------------------------------------


def mem_app(
    name: str,
    *held: Held,
    template: int = 0,
    freq: float = 1.0,
    cost: float = 0.05,
    floor: int = 0,
) -> AppLoad:
    return AppLoad(
        name, held, start_cost=cost, frequency=freq, min_instances=floor, fixed_memory=template
    )


def busy_mem(*ids: str, memory: int) -> tuple[Held, ...]:
    return tuple(Held(i, "busy", memory) for i in ids)


def test_templates_count_against_max_memory() -> None:
    # 2 x 100 MiB instances fit in 350 MiB, but not beside a 200 MiB template
    apps = [mem_app("a", *idle("a1", memory=100 * MiB)), mem_app("b")]
    assert admit(BudgetConfig(max_memory=350 * MiB), apps, "b").admit
    apps = [mem_app("a", *idle("a1", memory=100 * MiB), template=200 * MiB), mem_app("b")]
    v = admit(BudgetConfig(max_memory=350 * MiB), apps, "b")
    assert not v.admit and v.evict == (("a", "a1"),)


def test_memory_eviction_takes_the_cheapest_to_bring_back_until_the_start_fits() -> None:
    # priority = frequency x start cost / memory: the big, rare, quick app goes first,
    # then the next cheapest; the dear one (a slow start, often used) keeps its own
    apps = [
        mem_app("dear", *idle("d1", memory=100 * MiB), freq=20.0, cost=2.0),
        mem_app("big", *idle("g1", "g2", memory=300 * MiB), freq=0.1),
        mem_app("mid", *idle("m1", memory=100 * MiB), freq=1.0),
        mem_app("new", *busy_mem("n1", memory=100 * MiB)),
    ]
    # 900 MiB used, new needs 100 more: 1000 MiB against the cap
    v = admit(BudgetConfig(max_memory=700 * MiB), apps, "new")
    assert v.evict == (("big", "g1"),)  # 300 over: one of big's frees exactly that
    v = admit(BudgetConfig(max_memory=600 * MiB), apps, "new")
    assert v.evict == (("big", "g1"), ("big", "g2"))
    v = admit(BudgetConfig(max_memory=250 * MiB), apps, "new")
    assert v.evict == (("big", "g1"), ("big", "g2"), ("mid", "m1"), ("dear", "d1"))


def test_nothing_measured_max_memory_cannot_refuse() -> None:
    apps = [mem_app("a", *idle("a1", "a2")), mem_app("b")]
    assert admit(BudgetConfig(max_memory=1), apps, "b").admit


def test_memory_share_no_app_starves() -> None:
    # a holds 3 busy x 100 MiB + its 50 MiB template of a 500 MiB budget (share 250 MiB
    # with b asking), b its 100 MiB template: one of a's busy instances drains for b,
    # and no more than that
    apps = [
        mem_app("a", *busy_mem("a1", "a2", "a3", memory=100 * MiB), template=50 * MiB),
        mem_app("b", template=100 * MiB),
    ]
    cfg = BudgetConfig(max_memory=500 * MiB)
    v = admit(cfg, apps, "b")
    assert not v.admit and not v.evict and v.reclaim == (("a", "a1"),)
    # b at its share (100 + 2 x 100 > 250 with one more): it waits, a keeps the rest
    apps = [
        mem_app("a", *busy_mem("a1", "a2", memory=100 * MiB), template=50 * MiB),
        mem_app("b", *busy_mem("b1", memory=100 * MiB), template=100 * MiB),
    ]
    v = admit(cfg, apps, "b")
    assert not v.admit and not v.reclaim and "fair share" in v.reason
    # and a, now at its share, does not take b's back either: no ping-pong
    v = admit(cfg, apps, "a")
    assert not v.admit and not v.reclaim


def test_memory_reclaim_keeps_min_instances() -> None:
    apps = [
        mem_app("a", *busy_mem("a1", "a2", memory=200 * MiB), floor=2),
        mem_app("b", *busy_mem("b1", memory=10 * MiB)),
    ]
    v = admit(BudgetConfig(max_memory=415 * MiB), apps, "b")
    assert not v.admit and not v.reclaim and not v.evict


def test_under_memory_pressure_every_app_reaches_its_share() -> None:
    # three apps, each always asking for more, their instances always busy: the budget
    # (500 MiB, 50 MiB templates, 100 MiB instances) converges on each app's fair share,
    # whoever asked first; nobody is starved, and min_instances holds throughout
    cfg = BudgetConfig(max_memory=500 * MiB)
    held: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    floors = {"a": 1, "b": 0, "c": 0}
    promised: dict[str, int] = {}  # as proxy/machine.py keeps them
    serial = 0
    for _ in range(30):
        for name in ("c", "c", "c", "a", "b"):  # c asks three times as often
            apps = [
                mem_app(n, *busy_mem(*ids, memory=100 * MiB), template=50 * MiB, floor=floors[n])
                for n, ids in held.items()
            ]
            v = admit(cfg, apps, name, promised)
            for owner, iid in (*v.evict, *v.reclaim):  # drained and gone by the next ask
                assert len(held[owner]) > floors[owner], (owner, "given back below its floor")
                held[owner].remove(iid)
            if v.reclaim:
                promised[name] = promised.get(name, 0) + len(v.reclaim)
            if v.admit:
                serial += 1
                held[name].append(f"{name}{serial}")
                if promised.get(name):
                    promised[name] -= 1
    counts = {n: len(ids) for n, ids in held.items()}
    # 500 MiB - 3 templates = 350 MiB: three instances; one each
    assert counts == {"a": 1, "b": 1, "c": 1}, counts
