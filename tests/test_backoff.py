from __future__ import annotations

import random

from dispatcher.dispatch import poll_delay


def test_delays_grow_then_stay_under_the_cap() -> None:
    rng = random.Random(1)
    for attempt, (low, high) in enumerate([(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.5, 5.0)]):
        for _ in range(200):
            d = poll_delay(attempt, 1.0, 5.0, rng)
            assert low <= d <= high, (attempt, d)
    assert max(poll_delay(50, 1.0, 5.0, rng) for _ in range(500)) <= 5.0


def test_delays_are_jittered_never_zero() -> None:
    rng = random.Random(2)
    delays = {round(poll_delay(3, 1.0, 5.0, rng), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 2.5
