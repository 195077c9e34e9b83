"""The scale decision, as a pure function of a pool snapshot: every rule driven by an
explicit snapshot (measured start cost, load growth and recent peak included)."""

from __future__ import annotations

from forkproxy.proxy.config import PoolConfig
from forkproxy.proxy.policy import (
    KEEP_ALIVE_MAX,
    KEEP_ALIVE_MIN,
    InstanceView,
    Snapshot,
    decide,
    keep_alive,
    target,
)


def ready(
    i: str, in_flight: int = 0, idle_since: float | None = None, *, suspect: bool = False
) -> InstanceView:
    return InstanceView(
        id=i,
        phase="ready",
        in_flight=in_flight,
        idle_since=idle_since if not in_flight else None,
        suspect=suspect,
    )


def starting(i: str) -> InstanceView:
    return InstanceView(id=i, phase="starting", in_flight=0, idle_since=None)


def draining(i: str, in_flight: int = 1) -> InstanceView:
    return InstanceView(id=i, phase="draining", in_flight=in_flight, idle_since=None)


def snap(
    waiting: int = 0,
    *inst: InstanceView,
    now: float = 100.0,
    blocked: float = 0.0,
    refused: int = 0,
    cost: float = 0.01,
    growth: float = 0.0,
    peak: float = 0.0,
    finishing: float = 0.0,
    backlog: float = 0.0,
    gap_window: float = 0.0,
) -> Snapshot:
    return Snapshot(
        now=now,
        waiting=waiting,
        instances=tuple(inst),
        starts_blocked_until=blocked,
        refused=refused,
        start_cost=cost,
        growth=growth,
        recent_peak=peak,
        finishing=finishing,
        backlog_age=backlog,
        gap_window=gap_window,
    )


CFG = PoolConfig(max_concurrency=10, target_concurrency=7, max_starting=4, max_instances=20)
AUTO = PoolConfig(max_concurrency=4)  # every other key at its default ("auto")


def test_nothing_to_do_when_idle_and_empty() -> None:
    d = decide(snap(), CFG)
    assert d.start == 0 and d.stop == ()


def test_one_waiting_request_starts_one_instance() -> None:
    assert decide(snap(1), CFG).start == 1


def test_starts_in_flight_count_as_capacity() -> None:
    cfg = PoolConfig(max_concurrency=10, max_starting=4)
    # 5 waiting, one start in flight absorbs 10: no new start
    assert decide(snap(5, starting("a")), cfg).start == 0
    # 25 waiting, one start absorbs 10: two more
    assert decide(snap(25, starting("a")), cfg).start == 2


def test_burst_is_bounded_by_max_starting_and_max_instances() -> None:
    assert decide(snap(500), CFG).start == 4
    cfg = PoolConfig(max_concurrency=10, target_concurrency=7, max_starting=50, max_instances=6)
    assert decide(snap(500), cfg).start == 6
    busy = [ready(str(i), in_flight=10) for i in range(6)]
    assert decide(snap(500, *busy), cfg).start == 0


def test_explicit_target_concurrency_starts_ahead_of_saturation() -> None:
    # one instance at 8 in flight > target 7: a second one before the first saturates
    d = decide(snap(0, ready("a", in_flight=8)), CFG)
    assert d.start == 1 and d.reasons[0].startswith("load:")
    assert decide(snap(0, ready("a", in_flight=6)), CFG).start == 0
    # the start in flight is already the capacity the load asks for
    assert decide(snap(0, ready("a", in_flight=9), starting("b")), CFG).start == 0
    # 45 in flight at target 7 needs 7 instances: 2 more than the 5 running
    busy = [ready(str(i), in_flight=9) for i in range(5)]
    assert decide(snap(0, *busy), CFG).start == 2


def test_auto_target_is_max_concurrency_and_headroom_is_priced_by_start_cost() -> None:
    assert target(AUTO) == 4
    full = [ready(str(i), in_flight=4) for i in range(3)]
    # flat load at exactly max_concurrency: no spare, however cheap or dear a start is
    assert decide(snap(0, *full, cost=0.005), AUTO).start == 0
    assert decide(snap(0, *full, cost=0.7), AUTO).start == 0
    # load growing at 10 requests/s: a 5 ms start lets 0.05 more arrive (no spare); a 700 ms
    # start lets 7 more arrive while it runs: two instances ahead (Little's law)
    assert decide(snap(0, *full, cost=0.005, growth=10), AUTO).start == 0
    assert decide(snap(0, *full, cost=0.7, growth=10), AUTO).start == 2
    # ... and the starts in flight count
    assert decide(snap(0, *full, starting("s"), cost=0.7, growth=10), AUTO).start == 1
    # a step (200 requests/s for a moment) is not extrapolated past doubling the load,
    # nor past one round of starts (max_starting = 4 instances of 4)
    assert decide(snap(0, *full, cost=0.7, growth=200), AUTO).start == 3
    big = [ready(str(i), in_flight=4) for i in range(10)]
    assert decide(snap(0, *big, cost=0.7, growth=500), AUTO).start == 4
    # requests waiting are the growth already: only the queue rule starts for them
    assert decide(snap(1, *full, cost=0.7, growth=200), AUTO).start == 1


def test_slots_freeing_during_a_start_absorb_waiters() -> None:
    full = [ready(str(i), in_flight=4) for i in range(6)]
    # 240 requests/s finish: during a 10 ms start two slots free up, so two waiters
    # would rather wait for those than for a start; a third needs one
    assert decide(snap(2, *full, cost=0.01, finishing=240), AUTO).start == 0
    assert decide(snap(3, *full, cost=0.01, finishing=240), AUTO).start == 1
    # a queue that has lasted longer than a start is a shortage: no more waiting it out
    assert decide(snap(2, *full, cost=0.01, finishing=240, backlog=0.02), AUTO).start == 1
    # nothing finishing (long requests, websockets): every waiter counts
    assert decide(snap(3, *full, cost=0.01), AUTO).start == 1
    assert decide(snap(9, *full, cost=0.01), AUTO).start == 3


def test_per_request_instances_capacity_is_one() -> None:
    cfg = PoolConfig(
        max_requests_per_instance=1, max_concurrency=10, target_concurrency=7, max_starting=8
    )
    assert decide(snap(5), cfg).start == 5
    assert decide(snap(5, starting("a"), starting("b")), cfg).start == 3
    retiring = InstanceView(id="r", phase="ready", in_flight=1, idle_since=None, retiring=True)
    assert decide(snap(1, retiring), cfg).start == 1


def test_free_ready_slots_absorb_waiters() -> None:
    assert decide(snap(1, ready("a", in_flight=5)), CFG).start == 0


def test_min_instances_and_warm_pool_floors() -> None:
    cfg = PoolConfig(min_instances=2, warm_pool=1, max_concurrency=10, target_concurrency=7)
    assert decide(snap(), cfg).start == 2
    # load fits in one instance, the other is the spare: floor met
    assert decide(snap(0, ready("a", 1), ready("b", 0, 99.0)), cfg).start == 0
    # load needs two instances (10 > 7): a third as the spare
    assert decide(snap(0, ready("a", 5), ready("b", 5)), cfg).start == 1


def test_backoff_blocks_starts() -> None:
    assert decide(snap(3, now=10.0, blocked=11.0), CFG).start == 0
    assert decide(snap(3, now=12.0, blocked=11.0), CFG).start == 1


def test_keep_alive_is_priced_by_start_cost_unless_set() -> None:
    assert keep_alive(AUTO, 0.005) == KEEP_ALIVE_MIN  # a fork: well under a second
    assert keep_alive(AUTO, 0.25) == 5.0  # a docker create: a few seconds
    assert keep_alive(AUTO, 3.0) == 60.0  # a VM clone: a minute
    assert keep_alive(AUTO, 1e6) == KEEP_ALIVE_MAX
    assert keep_alive(PoolConfig(idle_ttl=7.0), 0.005) == 7.0


def test_idle_reaping_respects_ttl_and_floors() -> None:
    cfg = PoolConfig(idle_ttl=60, min_instances=1, max_concurrency=10, target_concurrency=7)
    inst = (ready("old", 0, 10.0), ready("older", 0, 5.0), ready("fresh", 0, 90.0))
    # nothing in the window asked for them: the longest idle go first
    assert decide(snap(0, *inst, now=100.0), cfg).stop == ("older", "old")
    # min_instances=2 keeps one of them (the most recently used)
    cfg2 = PoolConfig(idle_ttl=60, min_instances=2, max_concurrency=10, target_concurrency=7)
    assert decide(snap(0, *inst, now=100.0), cfg2).stop == ("older",)
    # a recent peak of 20 in flight needs all three: only the TTL reaps, the oldest first
    d = decide(snap(0, *inst, now=100.0, peak=20), cfg)
    assert d.stops == (("older", "idle"), ("old", "idle"))
    d = decide(snap(0, *inst, now=66.0, peak=20), cfg)
    assert d.stops == (("older", "idle"),)


def test_auto_keep_alive_reaps_a_fork_within_a_second() -> None:
    # a 5 ms fork start: kept for the KEEP_ALIVE_MIN floor (0.2 s), then reaped
    inst = (ready("a", 0, 99.0),)
    assert decide(snap(0, *inst, now=99.15, cost=0.005, peak=1), AUTO).stop == ()
    assert decide(snap(0, *inst, now=99.25, cost=0.005, peak=1), AUTO).stops == (("a", "idle"),)
    # a 20 ms start (keep-alive 0.4 s) keeps it a little longer
    assert decide(snap(0, *inst, now=99.3, cost=0.02, peak=1), AUTO).stop == ()
    assert decide(snap(0, *inst, now=99.45, cost=0.02, peak=1), AUTO).stop == ("a",)
    # the same idle time with a 250 ms start (keep-alive 5 s): kept
    assert decide(snap(0, *inst, now=99.6, cost=0.25, peak=1), AUTO).stop == ()


def test_a_learned_gap_window_holds_the_last_instance_only() -> None:
    # a fork (0.4 s keep-alive) of an app whose learned gaps ask for a 3 s hold
    last = (ready("a", 0, 99.0),)
    assert decide(snap(0, *last, now=101.5, cost=0.02, gap_window=3.0), AUTO).stop == ()
    assert decide(snap(0, *last, now=102.1, cost=0.02, gap_window=3.0), AUTO).stop == ("a",)
    assert decide(snap(0, *last, now=101.5, cost=0.02), AUTO).stop == ("a",)  # not learned
    # three idle instances: the two longest idle go at the keep-alive, the most recently
    # used one is held for the window
    three = (ready("a", 0, 99.0), ready("b", 0, 98.0), ready("c", 0, 97.0))
    d = decide(snap(0, *three, now=101.0, cost=0.02, gap_window=3.0), AUTO)
    assert d.stops == (("c", "idle"), ("b", "idle"))
    # busy with one request: only what the load needs and no more stays
    busy = (ready("a", 1), ready("b", 0, 99.0))
    assert decide(snap(0, *busy, now=101.0, cost=0.02, gap_window=3.0), AUTO).stop == ("b",)
    # a fixed idle_ttl: the pool passes no window, the TTL alone decides
    cfg = PoolConfig(idle_ttl=1.0, max_concurrency=4)
    assert decide(snap(0, *last, now=99.9, peak=1), cfg).stop == ()
    assert decide(snap(0, *last, now=100.1, peak=1), cfg).stop == ("a",)


def test_surplus_is_drained_when_load_fits_in_fewer_least_busy_first() -> None:
    # 4 instances, each a little busy (least_loaded spreads), 5 in flight; the window's
    # peak was 6: two instances carry it at max_concurrency 4, so two are drained even
    # though none ever sat idle
    inst = (ready("a", 2), ready("b", 1), ready("c", 1), ready("d", 1))
    d = decide(snap(0, *inst, peak=6), AUTO)
    assert d.stops == (("b", "surplus"), ("c", "surplus"))
    # a peak of 16 in the window: all four stay
    assert decide(snap(0, *inst, peak=16), AUTO).stop == ()


def test_busy_instances_waiters_and_starts_prevent_scale_in() -> None:
    cfg = PoolConfig(idle_ttl=1, max_concurrency=10, target_concurrency=7)
    assert decide(snap(0, ready("a", in_flight=1), now=100.0), cfg).stop == ()
    assert decide(snap(2, ready("a", 0, 1.0), now=100.0), cfg).stop == ()
    assert decide(snap(0, ready("a", 0, 1.0), starting("b"), now=100.0), cfg).stop == ()


# -- the review's findings (issue 11, point 4) ----------------------------------------


def test_warm_pool_spares_do_not_churn() -> None:
    # 3 busy + 2 spares idle past idle_ttl with warm_pool = 2: keep both, start none
    cfg = PoolConfig(max_concurrency=4, idle_ttl=1.0, warm_pool=2)
    inst = (
        ready("a", 4),
        ready("b", 4),
        ready("c", 4),
        ready("s1", 0, 10.0),
        ready("s2", 0, 10.0),
    )
    d = decide(snap(0, *inst, now=100.0, peak=12), cfg)
    assert d.start == 0 and d.stop == ()
    # and once the load is gone, the spares are what stays
    idle = tuple(ready(i.id, 0, 50.0) for i in inst)
    d = decide(snap(0, *idle, now=100.0), cfg)
    assert d.start == 0 and len(d.stop) == 3


def test_max_queue_zero_still_starts_instances() -> None:
    # nothing may wait; a request refused for lack of a slot is demand all the same
    cfg = PoolConfig(max_concurrency=4, max_queue=0)
    assert decide(snap(0, refused=1), cfg).start == 1
    assert decide(snap(0, starting("a"), refused=3), cfg).start == 0
    assert decide(snap(0, ready("a", 4), refused=1), cfg).start == 1
    # and nothing is reaped while requests are being refused
    assert decide(snap(0, ready("a", 0, 0.0), refused=1), cfg).stop == ()


def test_suspect_instances_are_not_free_capacity() -> None:
    # one waiting request, the only instance suspect (a transport failure, liveness check
    # pending): start another instead of waiting on it
    assert decide(snap(1, ready("a", 0, 99.0, suspect=True)), CFG).start == 1
    # its free slots do not absorb waiters, nor does it count toward the load's instances
    assert decide(snap(0, ready("a", 4, suspect=True), ready("b", 4)), AUTO).start == 0
    assert decide(snap(3, ready("a", 0, 99.0, suspect=True), ready("b", 4)), AUTO).start == 1


def test_draining_instances_count_against_max_instances() -> None:
    # max_instances is a hard cap while slow stops run
    cfg = PoolConfig(max_concurrency=4, max_instances=3)
    inst = (draining("d1"), draining("d2"), ready("a", 4))
    assert decide(snap(8, *inst), cfg).start == 0
    inst = (draining("d1"), ready("a", 4))
    assert decide(snap(8, *inst), cfg).start == 1
    # they take nothing new: not capacity, not reaped again
    assert decide(snap(1, draining("d1", 0)), cfg).start == 1
    assert decide(snap(0, draining("d1", 0)), cfg).stop == ()


def test_a_waiter_whose_client_left_is_not_demand() -> None:
    # the pool drops such a waiter from the queue (tests/proxy/pool/test_pool_drain.py):
    # the snapshot holds only live waiters, and with none the policy starts nothing
    assert decide(snap(0, ready("a", 4)), AUTO).start == 0
    assert decide(snap(1, ready("a", 4)), AUTO).start == 1
