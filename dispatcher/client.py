"""What a web app calls: submit a job (validate -> store.create -> publish), read it,
wait for it, cancel it."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery

from dispatcher.config import Settings, get_settings
from dispatcher.errors import WaitTimeout
from dispatcher.model import Envelope, Job, Status
from dispatcher.store import Store, connect, hook_envelope
from dispatcher.validation import check_job, check_job_id, check_webhook
from dispatcher.worker.app import make_app
from dispatcher.worker.publish import CeleryPublisher

log = logging.getLogger("dispatcher.client")


class Client:
    """Holds one Redis pool and one Celery app; safe to share between threads."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or make_app(self.settings)
        self.store = Store(connect(self.settings.redis_url, 32), self.settings.queue,
                           self.settings.route_budget())
        self.publisher = CeleryPublisher(self.app, self.settings.queue)

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
        webhook: str | None = None,
        webhook_events: Sequence[str] = ("completed",),
    ) -> str:
        """Queue a job; returns its id. ``job_id`` is an idempotency key.

        ``priority`` 9 is the most urgent. ``webhook`` gets a signed POST of the
        job when it ends (``webhook_events``: "completed" = any end, or some of
        "succeeded", "failed", "expired", "cancelled").
        Raises ``InvalidJob`` (a ``ValueError``) naming the bad field.
        """
        s = self.settings
        spec = check_job(
            s, endpoint, payload, cost=cost, path=path,
            max_wait=s.default_max_wait if max_wait is None else max_wait,
            timeout=s.default_timeout if timeout is None else timeout,
            priority=priority,
        )
        hook = None if webhook is None else check_webhook(s, webhook, webhook_events)
        job_id = uuid.uuid4().hex if job_id is None else check_job_id(job_id)
        fields = {
            "id": job_id,
            "status": Status.QUEUED,
            "endpoint": spec.endpoint,
            "cost": spec.cost,
            "path": spec.path,
            "payload": spec.payload_json,
            "max_wait": spec.max_wait,
            "timeout": spec.timeout,
            "priority": spec.priority,
            "queue": s.queue,
        }
        if hook:
            fields.update(webhook=hook[0], webhook_events=hook[1])
        if not self.store.create(job_id, fields, s.publish_grace):
            return job_id  # already submitted: same job, never a second run
        try:
            self.publisher.publish([Envelope("dispatch", job_id, 0, spec.priority,
                                             spec.endpoint)])
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
        return bool(self.cancel_many([job_id]))

    def cancel_many(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel jobs that have not ended; returns the ids this call cancelled."""
        s = self.settings
        cancelled, hooks = [], []
        for job_id in job_ids:
            done = self.store.finish(job_id, Status.CANCELLED, s.result_ttl,
                                     {"error": "cancelled by request", "error_kind": "cancelled"},
                                     grace=s.publish_grace)
            if done.outcome == "ok":
                cancelled.append(job_id)
                if done.hook:
                    hooks.append(job_id)
        self._publish_hooks(hooks)
        return cancelled

    def purge(self, endpoint: str) -> int:
        """Cancel every queued or waiting job of an endpoint (not those on a GPU); returns
        how many. Most urgent first, in batches, so Redis is never blocked for long."""
        s = self.settings
        total = 0
        while True:
            n, scanned, hooks = self.store.cancel_pending(
                endpoint, s.result_ttl, s.publish_grace, "cancelled by purge", "cancelled")
            total += n
            self._publish_hooks(hooks)
            if scanned == 0:
                return total

    def stats(self) -> dict[str, Any]:
        """Per-endpoint queue health; see ``dispatcher.stats``."""
        from dispatcher.ops.stats import collect

        return collect(self.store)

    def _publish_hooks(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        try:
            self.publisher.publish([hook_envelope(i) for i in job_ids])
        except Exception as e:  # due in Redis already: a worker's mover sends them
            log.warning("%d webhook(s) not published now (%s)", len(job_ids), type(e).__name__)

    def close(self) -> None:
        self.store.redis.close()
