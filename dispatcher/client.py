"""What a web app calls: submit a job, read it, wait for it, cancel it."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery import Celery

from dispatcher import jobs
from dispatcher.celery_app import DISPATCH_TASK, broker_priority, make_app
from dispatcher.jobs import Job
from dispatcher.settings import Settings, get_settings
from dispatcher.store import Store, connect
from dispatcher.validation import check_job, check_job_id

log = logging.getLogger("dispatcher.client")


class WaitTimeout(TimeoutError):
    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g}s")
        self.job = job


class Client:
    """Holds one Redis pool and one Celery app; safe to share between threads."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or make_app(self.settings)
        self.store = Store(connect(self.settings.redis_url, 32), self.settings.queue)

    def submit(
        self,
        endpoint: str,
        payload: Any,
        *,
        path: str,
        cost: float = 100.0,
        max_wait: float | None = None,
        timeout: float | None = None,
        priority: int = 0,
        job_id: str | None = None,
    ) -> str:
        """Queue a job; returns its id. ``job_id`` is an idempotency key.

        Raises ``InvalidJob`` (a ``ValueError``) naming the bad field.
        """
        s = self.settings
        spec = check_job(
            s, endpoint, payload, cost=cost, path=path,
            max_wait=s.default_max_wait if max_wait is None else max_wait,
            timeout=s.default_timeout if timeout is None else timeout,
            priority=priority,
        )
        job_id = uuid.uuid4().hex if job_id is None else check_job_id(job_id)
        fields = {
            "id": job_id,
            "status": jobs.QUEUED,
            "endpoint": spec.endpoint,
            "cost": spec.cost,
            "path": spec.path,
            "payload": spec.payload_json,
            "max_wait": spec.max_wait,
            "timeout": spec.timeout,
            "priority": spec.priority,
            "queue": s.queue,
        }
        if not self.store.create(job_id, fields, s.publish_grace):
            return job_id  # already submitted: same job, never a second run
        try:
            self.app.send_task(DISPATCH_TASK, args=[job_id, 0], queue=s.queue,
                               priority=broker_priority(spec.priority))
        except Exception as e:
            # The job is safe in Redis: the waiting set republishes it after the grace.
            log.warning("job %s stored but not published yet (%s); a worker will pick it up",
                        job_id, type(e).__name__)
        return job_id

    def get_job(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def wait(self, job_id: str, timeout: float = 60.0, poll: float = 0.25) -> Job:
        """Block until the job ends; raises ``WaitTimeout`` if it does not in time."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            job = self.get_job(job_id)
            if job.done or not job.known:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(job, timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, poll)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not ended. True if this call cancelled it.

        A job already on a GPU may still run there; its result is then dropped.
        """
        outcome = self.store.finish(
            job_id, jobs.CANCELLED, self.settings.result_ttl,
            {"error": "cancelled by request", "error_kind": "cancelled"},
        )
        return outcome == "ok"

    def close(self) -> None:
        self.store.redis.close()
