"""What a web app calls: submit a job (validate -> store.create -> publish), read it,
wait for it, cancel it; and what an operator calls: find jobs, re-run them, purge."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis
from celery import Celery

from dispatcher.config import Settings, get_settings
from dispatcher.errors import JobFailed, JobNotFound, WaitTimeout
from dispatcher.model import Envelope, Job, Status
from dispatcher.ops.jobs import find_jobs, names
from dispatcher.store import Store, connect, hook_envelope
from dispatcher.streams import Follow, result_text, sse_data, sse_end
from dispatcher.submission import first_of_each, new_job, new_jobs, retry_answer
from dispatcher.waits import RECHECK, next_block
from dispatcher.worker.app import make_app
from dispatcher.worker.publish import CeleryPublisher

log = logging.getLogger("dispatcher.client")

# Jobs per pipelined round trip in submit_many.
SUBMIT_CHUNK = 500
# Jobs per pipelined round trip in retry_many.
RETRY_CHUNK = 500


class Client:
    """Holds one Redis pool and one Celery app; safe to share between threads."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or make_app(self.settings)
        self.store = Store(connect(self.settings.redis_url, 32), self.settings.queue,
                           self.settings.route_budget())
        self.publisher = CeleryPublisher(self.app, self.settings.queue)
        self._waits: redis.Redis | None = None
        self._lock = threading.Lock()

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
        stream: bool = False,
        max_reroutes: int | None = None,
        retry_on: Sequence[str] | None = None,
    ) -> str:
        """Queue a job; returns its id. ``job_id`` is an idempotency key.

        ``priority`` 9 is the most urgent. ``webhook`` gets a signed POST of the
        job when it ends (``webhook_events``: "completed" = any end, or some of
        "succeeded", "failed", "expired", "cancelled"). ``stream``: the answer's pieces
        are readable as they arrive (``stream()``, ``sse()``, ``dispatcher:stream:<id>``).
        Retry policy: ``max_reroutes`` bounds this job's re-routes (default
        DISPATCHER_MAX_REROUTES); ``retry_on`` (``worker_timeout``,
        ``worker_stream_broken``) lets an idempotent job be re-run after those too, which
        by default fail it (the GPU may have done the work).
        Raises ``InvalidJob`` (a ``ValueError``) naming the bad field.
        """
        job = new_job(self.settings, endpoint, payload, path=path, cost=cost,
                      max_wait=max_wait, timeout=timeout, priority=priority, job_id=job_id,
                      webhook=webhook, webhook_events=webhook_events, stream=stream,
                      max_reroutes=max_reroutes, retry_on=retry_on)
        if self.store.create(job.id, job.fields, self.settings.publish_grace):
            self._publish_new([job.envelope])
        # else: already submitted: same job, never a second run
        return job.id

    def submit_many(self, jobs: Iterable[Mapping[str, Any]], chunk: int = SUBMIT_CHUNK
                    ) -> list[str]:
        """Queue many jobs (mappings of ``submit``'s arguments); returns their ids in order.

        Every job is checked before anything is written: a bad one raises ``InvalidJob``
        naming its index and field (``jobs[3].cost: ...``). Then one pipelined round trip
        per ``chunk`` jobs; each is idempotent on its own ``job_id``.
        """
        return [job_id for part in self.submit_chunks(jobs, chunk) for job_id in part]

    def submit_chunks(self, jobs: Iterable[Mapping[str, Any]], chunk: int = SUBMIT_CHUNK
                      ) -> Iterator[list[str]]:
        """``submit_many`` one chunk at a time (for progress bars): all jobs are checked
        before the first chunk is written."""
        checked = new_jobs(self.settings, jobs)
        for i in range(0, len(checked), max(1, chunk)):
            part = checked[i:i + max(1, chunk)]
            created = self.store.create_many([(j.id, j.fields) for j in part],
                                             self.settings.publish_grace)
            self._publish_new(first_of_each(part, created))
            yield [j.id for j in part]

    def _publish_new(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        try:
            self.publisher.publish(envelopes)
        except Exception as e:
            # The jobs are safe in Redis: the waiting set republishes them after the grace.
            log.warning("%d job(s) stored but not published yet (%s); a worker will pick "
                        "them up", len(envelopes), type(e).__name__)

    def get_job(self, job_id: str) -> Job:
        return self.store.view(job_id)

    def wait(self, job_id: str, timeout: float = 60.0, recheck: float = RECHECK) -> Job:
        """Block until the job ends, woken by its end (see ``dispatcher.waits``): three
        Redis commands for a job that ends within ``recheck`` seconds.

        Raises ``WaitTimeout`` if it does not end in time, ``JobNotFound`` if there is no
        such job (any more).
        """
        deadline = time.monotonic() + timeout
        job = self.store.view(job_id)
        while (block := next_block(job, deadline - time.monotonic(), timeout, recheck)):
            self.store.wait_end(job_id, block, self._blocking())
            job = self.store.view(job_id)
        return job

    def stream(self, job_id: str, timeout: float | None = None, recheck: float = RECHECK
               ) -> Iterator[str]:
        """The pieces of a streaming job's answer in order, from the first (a late reader
        misses none), as they arrive, until the job ends; raises ``JobFailed`` if it did
        not succeed, ``JobNotFound``, and ``WaitTimeout`` after ``timeout``. A job
        submitted without ``stream=True`` yields its whole result once it ends."""
        job = self.store.view(job_id)
        if not job.known:
            raise JobNotFound(job_id)
        if not job.stream:
            job = self.wait(job_id, 1e9 if timeout is None else timeout, recheck)
            if job.status != Status.SUCCEEDED:
                raise JobFailed(job)
            yield result_text(job)
            return
        follow = Follow(timeout, recheck)
        while follow.end is None:
            if follow.expired():
                raise WaitTimeout(self.store.view(job_id), timeout or 0)
            entries = self.store.read_stream(job_id, follow.last, follow.block(),
                                             self._blocking())
            yield from follow.feed(entries)
            if not entries and not self.store.view(job_id).known:
                raise JobNotFound(job_id)  # a stream outlives no job
        if follow.end != Status.SUCCEEDED:
            raise JobFailed(self.store.view(job_id))

    def sse(self, job_id: str, timeout: float | None = None) -> Iterator[bytes]:
        """``text/event-stream`` bytes of ``stream()``: a ``data:`` event per piece, then
        ``event: end`` with the job's status. A body for a Flask or Starlette response."""
        try:
            for piece in self.stream(job_id, timeout):
                yield sse_data(piece)
        except JobFailed as e:
            yield sse_end(e.job)
            return
        yield sse_end(self.store.view(job_id))

    def watch(self, job_id: str, timeout: float | None = None, recheck: float = RECHECK
              ) -> Iterator[Job]:
        """The job now, then again at each change of its status or wait reason, until it
        ends: queued -> waiting (``wait_reason``) -> running -> succeeded, for a UI.

        Woken by the status changes themselves (a subscription, apart from the submit
        pool); a change faster than one read of the job may be folded into the next,
        the end never is. Raises ``JobNotFound`` and, after ``timeout``, ``WaitTimeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        sub = self.store.subscribe(job_id, self._blocking())
        try:
            job = self.store.view(job_id)
            shown = None
            while True:
                if shown != (job.status, job.wait_reason):
                    shown = (job.status, job.wait_reason)
                    yield job
                left = None if deadline is None else deadline - time.monotonic()
                block = next_block(job, 1e9 if left is None else left, timeout or 0, recheck)
                if block is None:
                    return
                sub.get_message(timeout=block)
                job = self.store.view(job_id)
        finally:
            sub.close()

    def _blocking(self) -> redis.Redis:
        """The pool for blocking calls (made on first use), apart from the one submits
        use: a thousand threads waiting must not starve a submit."""
        if self._waits is None:
            with self._lock:
                if self._waits is None:
                    self._waits = connect(self.settings.redis_url, self.settings.max_waiters)
        return self._waits

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not ended. True if this call cancelled it.

        A job on a GPU has its call cut within about a second by the worker process that
        holds it (its lease is gone), and its error says so.
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

    def purge(self, endpoint: str, running: bool = False) -> int:
        """Cancel every queued or waiting job of an endpoint, and with ``running`` those on
        a GPU too (their calls are cut within about a second); returns how many. In
        batches, so Redis is never blocked for long."""
        s = self.settings
        total = 0
        cancels = [self.store.cancel_pending] + ([self.store.cancel_running] if running else [])
        for cancel in cancels:
            while True:
                n, scanned, hooks = cancel(endpoint, s.result_ttl, s.publish_grace,
                                           "cancelled by purge", "cancelled")
                total += n
                self._publish_hooks(hooks)
                if scanned == 0:
                    break
        return total

    # --- operators: find jobs, run them again --------------------------------------------

    def list_jobs(self, endpoint: str | None = None, status: str | Sequence[str] | None = None,
                  *, limit: int | None = 50, kind: str | Sequence[str] | None = None,
                  since: float | None = None) -> list[Job]:
        """Jobs the latest to enter their status first, from the job index (no scan):
        ``endpoint`` (None: every one), ``status`` (one or several; None: any),
        ``kind`` (their ``error_kind``), ``since`` (entered that status within so many
        seconds), at most ``limit`` (None: all). Each ``Job`` holds the listing's fields:
        status, error, error_kind, times and counters; never the payload or the result."""
        return find_jobs(self.store, endpoint, status, limit=limit, kind=kind, since=since)

    def retry(self, job_id: str, force: bool = False) -> bool:
        """Run an ended job (failed, expired, cancelled) again with its payload and
        settings: back to ``queued``, ``retries`` + 1, its error kept as ``last_error``.

        True if this call queued it; False if it has not ended (a second retry of a job
        queues it once). A succeeded job only with ``force``. Raises ``JobNotFound``, and
        ``RetryRefused`` saying why it cannot be run again.
        """
        return retry_answer(job_id, self.retry_many([job_id], force)[job_id])

    def retry_many(self, job_ids: Iterable[str], force: bool = False) -> dict[str, str]:
        """``retry`` for many jobs, 500 per round trip: each id's outcome, "ok" where this
        call queued it, else the live status it has or why not
        (``submission.RETRY_REFUSALS``)."""
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, str] = {}
        for i in range(0, len(ids), RETRY_CHUNK):
            part = ids[i:i + RETRY_CHUNK]
            done = self.store.retry_many(part, self.settings.publish_grace, force)
            out.update((job_id, r.outcome) for job_id, r in zip(part, done, strict=True))
            self._publish_new([r.envelope for r in done if r.envelope is not None])
        return out

    def retry_failed(self, endpoint: str, *, since: float | None = None,
                     kind: str | Sequence[str] | None = None,
                     status: str | Sequence[str] = "failed") -> list[str]:
        """Run again every job of ``endpoint`` that ended ``status`` (failed by default;
        expired, cancelled), within ``since`` seconds, of ``kind``; the ids queued."""
        allowed = [str(s) for s in (Status.FAILED, Status.EXPIRED, Status.CANCELLED)]
        statuses = names("status", status, allowed)
        jobs = self.list_jobs(endpoint, statuses, limit=None, kind=kind, since=since)
        done = self.retry_many([j.id for j in jobs])
        return [job_id for job_id, outcome in done.items() if outcome == "ok"]

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
        if self._waits is not None:
            self._waits.close()
