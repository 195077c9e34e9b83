"""The template's crash account (pure logic): first traceback in full, repeats counted."""

from __future__ import annotations

from forkproxy.backends.process.child.failures import REPEAT_EVERY, Failures

TB = 'Traceback (most recent call last):\n  File "x.py", line 3\nRuntimeError: at 0x{a:x} pid {p}\n'


def test_the_first_failure_is_shown_whole_and_repeats_are_counted_in_one_line() -> None:
    out: list[str] = []
    now = [100.0]
    f = Failures(out.append, clock=lambda: now[0])
    for i in range(50):  # the same failure; addresses and pids differ from fork to fork
        f.report(TB.format(a=0x7F00 + i, p=4000 + i))
    assert len(out) == 2
    assert "Traceback" in out[0]
    assert "failed again (x2 since" in out[1] and "Traceback" not in out[1]
    now[0] += REPEAT_EVERY
    f.report(TB.format(a=1, p=2))
    assert len(out) == 3 and "(x51 since" in out[2]
    f.report("Traceback (most recent call last):\nValueError: something else\n")
    assert len(out) == 4 and "ValueError: something else" in out[3] and "Traceback" in out[3]
