"""The Celery application: broker and result backend on the same Redis.

``celery -A dispatcher worker`` finds ``dispatcher.app``, built here from the
environment. Tests and tools build their own with ``make_app(settings)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from dispatcher.settings import Settings, get_settings
from dispatcher.store import PRIORITY_SEP, PRIORITY_STEPS, Due

DISPATCH_TASK = "dispatcher.dispatch"
WEBHOOK_TASK = "dispatcher.webhook"


def broker_priority(priority: int) -> int:
    """Our priority 9 is the most urgent; kombu's Redis transport serves 0 first."""
    return 9 - priority


def publish(app: Celery, task: str, due: Iterable[Due], queue: str) -> int:
    """Send one message per due job (or webhook delivery): only its id and schedule number.

    ``shadow`` and ``argsrepr`` are what Flower and the worker log show: the
    endpoint and the job id, never the payload.
    """
    n = 0
    verb = "dispatch" if task == DISPATCH_TASK else "webhook"
    with app.producer_or_acquire() as producer:
        for d in due:
            app.send_task(
                task, args=[d.id, d.seq], queue=queue, producer=producer,
                priority=broker_priority(d.priority), shadow=f"{verb} {d.endpoint}".rstrip(),
                argsrepr=f"job={d.id} seq={d.seq} priority={d.priority}",
            )
            n += 1
    return n


def make_app(settings: Settings | None = None, *, main: bool = False) -> Celery:
    settings = settings or get_settings()
    app = Celery("dispatcher", set_as_current=main)
    pool = settings.concurrency + 16
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport="dispatcher.transport:Transport",
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

    from dispatcher.mover import WaitingMover
    from dispatcher.tasks import register

    register(app)
    app.steps["worker"].add(WaitingMover)
    return app
