"""The scale decision, as a pure function of a pool snapshot."""

from __future__ import annotations

from proxy.config import PoolConfig
from proxy.policy import InstanceView, Snapshot, decide


def ready(i: str, in_flight: int = 0, idle_since: float | None = None) -> InstanceView:
    return InstanceView(
        id=i, ready=True, in_flight=in_flight, idle_since=idle_since if not in_flight else None
    )


def starting(i: str) -> InstanceView:
    return InstanceView(id=i, ready=False, in_flight=0, idle_since=None)


def snap(
    waiting: int = 0, *inst: InstanceView, now: float = 100.0, blocked: float = 0.0
) -> Snapshot:
    return Snapshot(now=now, waiting=waiting, instances=tuple(inst), starts_blocked_until=blocked)


CFG = PoolConfig(max_concurrency=10, target_concurrency=7, max_starting=4, max_instances=20)


def test_nothing_to_do_when_idle_and_empty() -> None:
    d = decide(snap(), CFG)
    assert d.start == 0 and d.stop == ()


def test_one_waiting_request_starts_one_instance() -> None:
    assert decide(snap(1), CFG).start == 1


def test_starts_in_flight_count_as_capacity() -> None:
    # 5 waiting, one start in flight absorbs 10: no new start
    assert decide(snap(5, starting("a")), CFG).start == 0
    # 25 waiting, one start absorbs 10: two more
    assert decide(snap(25, starting("a")), CFG).start == 2


def test_burst_is_bounded_by_max_starting_and_max_instances() -> None:
    assert decide(snap(500), CFG).start == 4
    cfg = PoolConfig(max_concurrency=10, target_concurrency=7, max_starting=50, max_instances=6)
    assert decide(snap(500), cfg).start == 6
    busy = [ready(str(i), in_flight=10) for i in range(6)]
    assert decide(snap(500, *busy), cfg).start == 0


def test_ahead_of_saturation_on_target_concurrency() -> None:
    # one instance at 8 in flight > target 7: start one more before it saturates
    d = decide(snap(0, ready("a", in_flight=8)), CFG)
    assert d.start == 1 and "target_concurrency" in d.reasons
    assert decide(snap(0, ready("a", in_flight=6)), CFG).start == 0
    # one at a time: not while another start is in flight
    assert decide(snap(0, ready("a", in_flight=9), starting("b")), CFG).start == 0
    busy = [ready(str(i), in_flight=9) for i in range(5)]
    assert decide(snap(0, *busy), CFG).start == 1
    # headroom of one instance at most: 100 in flight on 11 instances needs no 12th
    # although 100 / 11 > 7
    busy = [ready(str(i), in_flight=10) for i in range(9)] + [ready("x", 10), ready("y", 0, 1.0)]
    assert decide(snap(0, *busy), CFG).start == 0


def test_free_ready_slots_absorb_waiters() -> None:
    assert decide(snap(1, ready("a", in_flight=5)), CFG).start == 0


def test_min_instances_and_warm_pool_floors() -> None:
    cfg = PoolConfig(min_instances=2, warm_pool=1, max_concurrency=10, target_concurrency=7)
    assert decide(snap(), cfg).start == 2
    # two ready, one busy: one idle spare, floor met
    assert decide(snap(0, ready("a", 1), ready("b", 0, 99.0)), cfg).start == 0
    # both busy: no spare left, start one
    assert decide(snap(0, ready("a", 1), ready("b", 1)), cfg).start == 1


def test_backoff_blocks_starts() -> None:
    assert decide(snap(3, now=10.0, blocked=11.0), CFG).start == 0
    assert decide(snap(3, now=12.0, blocked=11.0), CFG).start == 1


def test_idle_reaping_respects_ttl_and_floors() -> None:
    cfg = PoolConfig(idle_ttl=60, min_instances=1, max_concurrency=10, target_concurrency=7)
    inst = (ready("old", 0, 10.0), ready("older", 0, 5.0), ready("fresh", 0, 90.0))
    d = decide(snap(0, *inst, now=100.0), cfg)
    assert d.stop == ("older", "old")
    # min_instances=2 keeps one of the expired ones (the most recently used)
    cfg2 = PoolConfig(idle_ttl=60, min_instances=2, max_concurrency=10, target_concurrency=7)
    assert decide(snap(0, *inst, now=100.0), cfg2).stop == ("older",)


def test_busy_instances_and_waiters_prevent_reaping() -> None:
    cfg = PoolConfig(idle_ttl=1, max_concurrency=10, target_concurrency=7)
    assert decide(snap(0, ready("a", in_flight=1), now=100.0), cfg).stop == ()
    assert decide(snap(2, ready("a", 0, 1.0), now=100.0), cfg).stop == ()


def test_per_request_instances_capacity_is_one() -> None:
    cfg = PoolConfig(
        max_requests_per_instance=1, max_concurrency=10, target_concurrency=7, max_starting=8
    )
    assert decide(snap(5), cfg).start == 5
    assert decide(snap(5, starting("a"), starting("b")), cfg).start == 3
    retiring = InstanceView(id="r", ready=True, in_flight=1, idle_since=None, retiring=True)
    assert decide(snap(1, retiring), cfg).start == 1
