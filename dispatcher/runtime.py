"""Per-process resources of a worker: one Redis pool and one HTTP session, shared by threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from celery import Celery

from dispatcher.settings import Settings
from dispatcher.store import Due, Store, connect
from dispatcher.vast import VastClient

log = logging.getLogger("dispatcher.runtime")

_lock = threading.Lock()

# Each process writes an endpoint's last route status at most this often
# (429s always): the status is for people, not worth a Redis call per poll.
STATUS_EVERY = 1.0


@dataclass
class Runtime:
    app: Celery
    settings: Settings
    store: Store
    vast: VastClient
    _status: dict[str, tuple[str, float]] = field(default_factory=dict)

    def route_status(self, endpoint: str, text: str, rate_limited: bool = False) -> None:
        """Record what /route/ said for ``dispatcher stats``; a 429 backs off the whole fleet."""
        t = time.monotonic()
        last = self._status.get(endpoint)
        if not rate_limited and last and last[0] == text and t - last[1] < STATUS_EVERY:
            return
        self._status[endpoint] = (text, t)
        try:
            level = self.store.route_result(endpoint, text, rate_limited)
        except Exception as e:  # stats only; the job goes on
            log.warning("route status for %r not recorded: %s", endpoint, type(e).__name__)
            return
        if level:
            log.warning("route 429 for endpoint %r: fleet backs off (level %d, rate / %d)",
                        endpoint, level, 2**level)

    def publish(self, task: str, due: Sequence[Due]) -> None:
        """Publish now what Redis already holds as due: a failed publish is only a delay,
        the mover publishes it after the grace."""
        if not due:
            return
        from dispatcher.celery_app import publish

        try:
            publish(self.app, task, due, self.settings.queue)
        except Exception as e:
            log.warning("%d %s message(s) not published now (%s); the mover will",
                        len(due), task, type(e).__name__)


def runtime_for(app: Celery) -> Runtime:
    rt = getattr(app, "_dispatcher_runtime", None)
    if rt is not None:
        return rt
    with _lock:
        rt = getattr(app, "_dispatcher_runtime", None)
        if rt is None:
            s: Settings = app.dispatcher_settings
            store = Store(connect(s.redis_url, s.concurrency + 16), s.queue, s.route_budget())
            rt = Runtime(app, s, store, VastClient.from_settings(s))
            app._dispatcher_runtime = rt
    return rt
