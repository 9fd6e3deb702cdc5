"""The Celery ``Publisher``: one message per envelope, carrying only a job id and a number."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from dispatcher.config import default_webhook_queue
from dispatcher.model import Envelope

DISPATCH_TASK = "dispatcher.dispatch"
WEBHOOK_TASK = "dispatcher.webhook"
TASK_NAMES = {"dispatch": DISPATCH_TASK, "webhook": WEBHOOK_TASK}


def broker_priority(priority: int) -> int:
    """Our priority 9 is the most urgent; kombu's Redis transport serves 0 first."""
    return 9 - priority


class CeleryPublisher:
    """Dispatch messages go to ``queue``; webhook deliveries to their own queue
    (``DISPATCHER_WEBHOOK_QUEUE``), served by ``dispatcher worker --webhooks``, so a slow
    receiver holds a webhook thread, never one that dispatches jobs."""

    def __init__(self, app: Celery, queue: str, hook_queue: str | None = None) -> None:
        self.app = app
        self.queue = queue
        if hook_queue is None:
            s = getattr(app, "dispatcher_settings", None)
            hook_queue = (s.webhook_queue if s is not None and s.queue == queue
                          else default_webhook_queue(queue))
        self.hook_queue = hook_queue
        self._queues = {"dispatch": queue, "webhook": hook_queue}

    def publish(self, envelopes: Iterable[Envelope]) -> int:
        """``shadow`` and ``argsrepr`` are what Flower and the worker log show: the
        endpoint and the job id, never the payload."""
        n = 0
        with self.app.producer_or_acquire() as producer:
            for e in envelopes:
                self.app.send_task(
                    TASK_NAMES[e.task], args=[e.id, e.seq], queue=self._queues[e.task],
                    producer=producer, priority=broker_priority(e.priority),
                    shadow=f"{e.task} {e.endpoint}".rstrip(),
                    argsrepr=f"job={e.id} seq={e.seq} priority={e.priority}",
                )
                n += 1
        return n
