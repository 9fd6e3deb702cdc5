"""The Celery tasks. Their messages carry only a job id and a schedule number."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from dispatcher.dispatch import run_job
from dispatcher.runtime import Runtime
from dispatcher.webhooks.task import run_webhook
from dispatcher.worker.publish import DISPATCH_TASK, WEBHOOK_TASK


def register(app: Celery, runtime_for: Callable[[Celery], Runtime]) -> None:
    @app.task(name=DISPATCH_TASK, bind=True, acks_late=True, ignore_result=True)
    def dispatch(self, job_id: str, seq: int) -> str:  # noqa: ANN001
        return run_job(runtime_for(self.app), job_id, seq)

    @app.task(name=WEBHOOK_TASK, bind=True, acks_late=True, ignore_result=True)
    def webhook(self, job_id: str, seq: int) -> str:  # noqa: ANN001
        return run_webhook(runtime_for(self.app), job_id, seq)
