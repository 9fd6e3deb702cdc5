"""Per-process resources of a worker: one Redis pool and one HTTP session, shared by threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from celery import Celery

from dispatcher.settings import Settings
from dispatcher.store import Store, connect
from dispatcher.vast import VastClient

_lock = threading.Lock()


@dataclass
class Runtime:
    app: Celery
    settings: Settings
    store: Store
    vast: VastClient


def runtime_for(app: Celery) -> Runtime:
    rt = getattr(app, "_dispatcher_runtime", None)
    if rt is not None:
        return rt
    with _lock:
        rt = getattr(app, "_dispatcher_runtime", None)
        if rt is None:
            s: Settings = app.dispatcher_settings
            store = Store(connect(s.redis_url, s.concurrency + 16), s.queue)
            rt = Runtime(app, s, store, VastClient.from_settings(s))
            app._dispatcher_runtime = rt
    return rt
