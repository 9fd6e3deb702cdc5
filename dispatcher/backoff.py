"""Poll delays: exponential with jitter, capped, like Vast's own client but bounded below."""

from __future__ import annotations

import random


def poll_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before poll number ``attempt`` (0-based).

    "Equal jitter": half the step is fixed so a job is never re-polled at once
    (no busy loop), half is random so a fleet of waiting jobs spreads out.
    """
    step = min(cap, base * (2 ** min(attempt, 30)))
    r = (rng or random).random()
    return step / 2 + r * step / 2
