"""Moves due work from Redis to the Celery queue: jobs due for their next step, and
webhook deliveries due for an attempt.

Every worker process runs one mover thread (a worker bootstep, in ``app.py``). Movers need no
leader: the Lua script hands each due job to exactly one of them, and a job
whose publish fails is due again after the publish grace.
"""

from __future__ import annotations

import logging
import threading
import time

from dispatcher.runtime import Runtime

log = logging.getLogger("dispatcher.mover")

BATCH = 500
FORGET_EVERY = 60.0  # seconds between sweeps for idle endpoints


class DueMover:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dispatcher-mover", daemon=True)
        self.moved = 0
        self._next_forget = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def tick(self) -> int:
        """Publish one batch of due jobs and due webhook deliveries; returns how many."""
        s = self.rt.settings
        n = 0
        for hooks in (False, True):
            due = self.rt.store.move_due(BATCH, s.publish_grace, s.max_backlog, hooks=hooks)
            if due:
                n += self.rt.publisher.publish(due)
        self.moved += n
        if time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + FORGET_EVERY
            gone = self.rt.store.forget_idle_endpoints(s.endpoint_idle)
            if gone:
                log.info("forgot %d idle endpoint(s): %s", len(gone), ", ".join(gone[:10]))
        return n

    def _loop(self) -> None:
        interval = self.rt.settings.mover_interval
        failures = 0
        while not self._stop.is_set():
            try:
                n = self.tick()
                failures = 0
            except Exception as e:  # Redis restarting, broker down: try again shortly
                failures += 1
                n = 0
                log.warning("mover: %s: %s (retrying)", type(e).__name__, e)
            if n < BATCH:
                self._stop.wait(min(5.0, interval * (2**failures)) if failures else interval)
