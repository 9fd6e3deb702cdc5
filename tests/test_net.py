"""The watchdog behind every HTTP exchange's deadline."""

from __future__ import annotations

import time

from dispatcher.net import Watchdog


def test_a_guard_fires_at_its_deadline_and_not_before() -> None:
    w = Watchdog()
    g = w.guard(0.3)
    time.sleep(0.1)
    assert g.fired is None
    deadline = time.monotonic() + 5
    while g.fired is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g.fired == "deadline"


def test_an_abort_fires_at_once_and_a_finished_guard_never_fires() -> None:
    w = Watchdog()
    g = w.guard(60)
    g.abort("cancelled")
    assert (g.fired, g.reason) == ("aborted", "cancelled")
    done = w.guard(0.05)
    done.done()
    time.sleep(0.3)
    assert done.fired is None


def test_finished_guards_do_not_pile_up() -> None:
    """A long timeout must not keep every finished call's guard until its deadline."""
    w = Watchdog()
    for _ in range(20_000):
        w.guard(600).done()
    live = [w.guard(600) for _ in range(10)]
    assert len(w) <= 2 * len(live) + 65
    for g in live:
        g.done()
