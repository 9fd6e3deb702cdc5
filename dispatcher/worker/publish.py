"""The Celery ``Publisher``: one message per envelope, carrying only a job id and a number."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from dispatcher.model import Envelope

DISPATCH_TASK = "dispatcher.dispatch"
WEBHOOK_TASK = "dispatcher.webhook"
TASK_NAMES = {"dispatch": DISPATCH_TASK, "webhook": WEBHOOK_TASK}


def broker_priority(priority: int) -> int:
    """Our priority 9 is the most urgent; kombu's Redis transport serves 0 first."""
    return 9 - priority


class CeleryPublisher:
    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue

    def publish(self, envelopes: Iterable[Envelope]) -> int:
        """``shadow`` and ``argsrepr`` are what Flower and the worker log show: the
        endpoint and the job id, never the payload."""
        n = 0
        with self.app.producer_or_acquire() as producer:
            for e in envelopes:
                self.app.send_task(
                    TASK_NAMES[e.task], args=[e.id, e.seq], queue=self.queue,
                    producer=producer, priority=broker_priority(e.priority),
                    shadow=f"{e.task} {e.endpoint}".rstrip(),
                    argsrepr=f"job={e.id} seq={e.seq} priority={e.priority}",
                )
                n += 1
        return n
