"""The ceiling: a bare Celery no-op task on the same Redis as broker and result backend.

Run as ``celery -A bench.ceiling worker --pool threads``; the broker URL comes from
``BENCH_REDIS_URL``, the queue from ``BENCH_QUEUE``. ``BENCH_CELERY_CONF=dispatcher``
gives the same no-op the dispatcher's Celery settings (acks late, priority lists,
prefetch 1, task events), to split the gap into "Celery settings" and "our code".
"""

from __future__ import annotations

import os

from celery import Celery

NOOP_TASK = "bench.noop"

# The dispatcher's Celery settings that change the cost of a message.
DISPATCHER_KEYS = (
    "task_acks_late", "task_reject_on_worker_lost", "worker_prefetch_multiplier",
    "broker_transport_options", "result_backend_transport_options", "broker_pool_limit",
    "redis_max_connections", "worker_send_task_events", "task_send_sent_event",
)


def make_app(redis_url: str, queue: str, dispatcher_conf: bool = False,
             concurrency: int = 64) -> Celery:
    """Celery defaults, except JSON, the threads pool and results kept in Redis."""
    app = Celery("bench-ceiling", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_ignore_result=False,
        worker_pool="threads",
        broker_connection_retry_on_startup=True,
    )
    if dispatcher_conf:
        from dispatcher.config import Settings
        from dispatcher.worker.app import make_app as dispatcher_app

        theirs = dispatcher_app(Settings(redis_url=redis_url, queue=queue,
                                         concurrency=concurrency)).conf
        app.conf.update({k: theirs[k] for k in DISPATCHER_KEYS})

    @app.task(name=NOOP_TASK)
    def noop() -> None:
        return None

    return app


app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://localhost:6379/0"),
               os.environ.get("BENCH_QUEUE", "bench-ceiling"),
               os.environ.get("BENCH_CELERY_CONF") == "dispatcher",
               int(os.environ.get("BENCH_CONCURRENCY", "64")))
