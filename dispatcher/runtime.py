"""What a dispatch run needs from its process: settings, the store, the Vast client and
somewhere to publish messages. No Celery here: ``worker/`` builds one per worker
process with a Celery ``Publisher``; tests and tools may build their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dispatcher.config import Settings
from dispatcher.model import Envelope
from dispatcher.store import Store
from dispatcher.vast import VastClient

log = logging.getLogger("dispatcher.runtime")

# Each process writes an endpoint's last route status at most this often
# (429s always): the status is for people, not worth a Redis call per poll.
STATUS_EVERY = 1.0


class Publisher(Protocol):
    """Sends one message per envelope to the job queue; returns how many were sent."""

    def publish(self, envelopes: Sequence[Envelope]) -> int: ...


@dataclass
class Runtime:
    settings: Settings
    store: Store
    vast: VastClient
    publisher: Publisher
    _status: dict[str, tuple[str, float]] = field(default_factory=dict)

    def record_route_answer(self, endpoint: str, text: str, rate_limited: bool = False) -> None:
        """Record what /route/ said for ``dispatcher stats``. A 429 may cut the whole
        fleet's route rate (``Store.record_route_answer``)."""
        t = time.monotonic()
        last = self._status.get(endpoint)
        if not rate_limited and last and last[0] == text and t - last[1] < STATUS_EVERY:
            return
        self._status[endpoint] = (text, t)
        try:
            level = self.store.record_route_answer(endpoint, text, rate_limited)
        except Exception as e:  # stats only; the job goes on
            log.warning("route status for %r not recorded: %s", endpoint, type(e).__name__)
            return
        if level:
            log.warning("route 429 for endpoint %r: fleet backs off (level %d, rate / %d)",
                        endpoint, level, 2**level)

    def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish now what Redis already holds as due: a failed publish is only a delay,
        the mover publishes it after the grace."""
        if not envelopes:
            return
        try:
            self.publisher.publish(envelopes)
        except Exception as e:
            log.warning("%d message(s) not published now (%s); the mover will",
                        len(envelopes), type(e).__name__)
