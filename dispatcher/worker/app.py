"""The Celery application: configuration only. Broker and result backend on one Redis.

``celery -A dispatcher worker`` finds ``dispatcher.app``, built here from the
environment. Tests and tools build their own with ``make_app(settings)``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps

from dispatcher.config import Settings, get_settings
from dispatcher.runtime import Runtime
from dispatcher.store import Store, connect
from dispatcher.store.keys import PRIORITY_SEP, PRIORITY_STEPS
from dispatcher.vast import VastClient
from dispatcher.worker.mover import DueMover
from dispatcher.worker.publish import CeleryPublisher
from dispatcher.worker.tasks import register

log = logging.getLogger("dispatcher.worker")
_lock = threading.Lock()


def make_app(settings: Settings | None = None, *, main: bool = False) -> Celery:
    settings = settings or get_settings()
    app = Celery("dispatcher", set_as_current=main)
    pool = settings.concurrency + 16
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport="dispatcher.worker.transport:Transport",
        result_backend=settings.redis_url,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        # A job message is acked only when its run ends; a worker that dies
        # mid-run leaves it unacked, and Redis hands it out again after
        # visibility_timeout (kept above the longest execution timeout).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One Redis list per priority level, served most urgent first.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu sweeps for expired unacked messages every interval x throttle
            # seconds (100 s by default): keep the sweep well under the timeout.
            "unacked_restore_interval": max(1, min(30, int(settings.visibility_timeout / 20))),
            "unacked_restore_throttle": 1,
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
            "queue_order_strategy": "priority",
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_pool_limit=pool,
        redis_max_connections=pool,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Off by default: three event publishes per task cost ~10% of worker CPU
        # (measured in bench/). DISPATCHER_TASK_EVENTS=1 or `dispatcher worker --events`
        # turns them on for Flower.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_concurrency=settings.concurrency,
        worker_pool="threads",
        task_ignore_result=True,
        result_expires=settings.result_ttl,
    )
    app.dispatcher_settings = settings
    if not settings.task_log:
        # Celery logs "received" and "succeeded" at INFO for every task: two formatted log
        # lines per job, a measurable share of the hot path (bench/).
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
    register(app, runtime_for)
    app.steps["worker"].add(MoverStep)
    return app


def runtime_for(app: Celery) -> Runtime:
    """The process's one Runtime for this app, made on first use (threads share it)."""
    rt: Runtime | None = getattr(app, "_dispatcher_runtime", None)
    if rt is not None:
        return rt
    with _lock:
        rt = getattr(app, "_dispatcher_runtime", None)
        if rt is None:
            s: Settings = app.dispatcher_settings
            store = Store(connect(s.redis_url, s.concurrency + 16), s.queue, s.route_budget(),
                          hook_queue=s.webhook_queue)
            rt = Runtime(s, store, VastClient.from_settings(s),
                         CeleryPublisher(app, s.queue, s.webhook_queue))
            app._dispatcher_runtime = rt
    return rt


def check_redis(rt: Runtime) -> None:
    """Say loudly at start if Redis may drop live jobs: an eviction policy other than
    noeviction deletes job hashes under memory pressure (they then read "unknown")."""
    try:
        policy = rt.store.eviction_policy()
    except Exception as e:  # Redis not up yet: the worker retries; say nothing false
        log.warning("could not read Redis' maxmemory-policy: %s", type(e).__name__)
        return
    if policy is not None and policy != "noeviction":
        log.error("REDIS maxmemory-policy IS %r: under memory pressure Redis will EVICT LIVE "
                  "JOBS (they vanish and read 'unknown'). Set maxmemory-policy noeviction "
                  "(and AOF with appendfsync always for zero loss on a crash).", policy)


class MoverStep(bootsteps.StartStopStep):
    """Worker bootstep: a due mover thread for as long as the worker runs."""

    label = "dispatcher due mover"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.mover: DueMover | None = None

    def start(self, worker: Any) -> None:
        rt = runtime_for(worker.app)
        check_redis(rt)
        self.mover = DueMover(rt)
        self.mover.start()

    def stop(self, worker: Any) -> None:
        if self.mover is not None:
            self.mover.stop()

    shutdown = stop
