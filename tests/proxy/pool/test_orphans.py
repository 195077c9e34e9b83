"""The orphan judge (pure): an owner is stopped only when /proc proves it or its lease
stood still for the grace period on our own clock; without leases, never."""

from __future__ import annotations

import os

from forkproxy.backends.support import owner
from forkproxy.proxy.orphans import Judge


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_owner_ids_prove_a_live_process_and_a_dead_one() -> None:
    me = owner.new_owner_id()
    assert owner.gone_here(me) is False
    parsed = owner.parse(me)
    assert parsed is not None and parsed.pid == os.getpid()
    # same pid, another start time: the pid was recycled, the owner is gone
    assert owner.gone_here(str(owner.Owner("h-1", parsed.space, parsed.pid, 1))) is True
    assert owner.gone_here(str(owner.Owner("h-1", parsed.space, 2**22 + 7, 5))) is True
    assert owner.gone_here(str(owner.Owner("h-1", "elsewhere", 1, 5))) is None
    assert owner.gone_here("legacy-owner") is None
    assert owner.short(me) == parsed.name


def test_an_owner_of_this_very_process_is_told_from_a_replica() -> None:
    # a reload's two generations share the process: the sweep says so, not "another replica"
    me = owner.new_owner_id()
    parsed = owner.parse(me)
    assert parsed is not None
    assert owner.this_process(me) and owner.this_process(owner.new_owner_id())
    assert not owner.this_process(str(owner.Owner("h-1", parsed.space, os.getppid(), 5)))
    assert not owner.this_process(str(owner.Owner("h-1", parsed.space, parsed.pid, 1)))
    assert not owner.this_process("legacy-owner")


def test_a_changing_lease_keeps_its_owner_alive_a_stale_one_does_not() -> None:
    clock = Clock()
    judge = Judge(10.0, clock, gone_here=lambda _: None)
    for beat in range(5):
        judge.observe({"a": f"a-{beat}", "b": "b-0"})
        assert not judge.stopped("a")
        assert judge.stopped("b") == (clock.now - 100 > 10)
        clock.now += 4
    judge.observe({"a": "a-5", "b": "b-0"})
    assert not judge.stopped("a")
    assert judge.stopped("b")  # unchanged for 20 s > 10 s


def test_an_owner_without_a_lease_is_stopped_only_after_the_grace() -> None:
    clock = Clock()
    judge = Judge(10.0, clock, gone_here=lambda _: None)
    judge.observe({})
    assert not judge.stopped("ghost")
    clock.now += 11
    judge.observe({})
    assert judge.stopped("ghost")


def test_proof_wins_and_no_leases_means_never() -> None:
    clock = Clock()
    judge = Judge(10.0, clock, gone_here=lambda who: {"dead": True, "live": False}.get(who))
    judge.observe(None)
    assert judge.stopped("dead")
    assert not judge.stopped("live")
    clock.now += 1000
    judge.observe(None)
    assert not judge.stopped("elsewhere")  # no lease, no proof: left alone
