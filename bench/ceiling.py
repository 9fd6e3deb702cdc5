"""The ceiling: a bare Celery no-op task on the same Redis as broker and result backend.

Run as ``celery -A bench.ceiling worker --pool threads``; the broker URL comes from
``BENCH_REDIS_URL`` and the queue from ``BENCH_QUEUE``.
"""

from __future__ import annotations

import os

from celery import Celery

NOOP_TASK = "bench.noop"


def make_app(redis_url: str, queue: str) -> Celery:
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

    @app.task(name=NOOP_TASK)
    def noop() -> None:
        return None

    return app


app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://localhost:6379/0"),
               os.environ.get("BENCH_QUEUE", "bench-ceiling"))
