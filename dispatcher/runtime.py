"""What a dispatch run needs from its process: settings, the store, the Vast client and
somewhere to publish messages. No Celery here: ``worker/`` builds one per worker
process with a Celery ``Publisher``; tests and tools may build their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dispatcher.config import Settings
from dispatcher.model import TERMINAL, Envelope
from dispatcher.net import Guard
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
    inflight: InFlight = field(init=False)

    def __post_init__(self) -> None:
        self.inflight = InFlight(self.store, self.settings.lease)

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


# A running job's lease is renewed this often while its GPU call is open; it is also
# how soon a cancel from another process cuts the call.
RENEW_EVERY = 1.0


class InFlight:
    """The GPU calls this process has open: their leases are renewed every second in one
    script, and a call whose lease is gone (the job was cancelled, or another run took it
    over) is cut. If Redis cannot be reached for most of a lease, every call is cut: this
    process can no longer prove it holds them, and another worker may run them soon."""

    def __init__(self, store: Store, lease: float, every: float = RENEW_EVERY) -> None:
        self.store = store
        self.lease = lease
        self.every = every
        self._calls: dict[str, tuple[str, Guard]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = time.monotonic()

    def add(self, job_id: str, token: str, guard: Guard) -> None:
        with self._lock:
            self._calls[job_id] = (token, guard)
            if self._thread is None or not self._thread.is_alive():
                self._last_ok = time.monotonic()
                self._thread = threading.Thread(target=self._run, name="dispatcher-leases",
                                                daemon=True)
                self._thread.start()

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._calls.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._calls)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            with self._lock:
                calls = dict(self._calls)
            if not calls:
                continue
            try:
                gone = self.store.renew([(i, tok) for i, (tok, _) in calls.items()], self.lease)
                self._last_ok = time.monotonic()
            except Exception as e:
                silent = time.monotonic() - self._last_ok
                log.warning("lease renewal failed (%s) for %.1fs", type(e).__name__, silent)
                if silent > self.lease - 2 * self.every:
                    for job_id, (_, guard) in calls.items():
                        guard.abort(f"lease of job {job_id} could not be renewed")
                continue
            for job_id, status in gone.items():
                _, guard = calls[job_id]
                guard.abort("job cancelled" if status == "cancelled" else
                            f"job is {status}" if status in TERMINAL else
                            "another run took the job over")
