"""Every error the dispatcher raises, in one tree under ``DispatcherError``.

An app catches ``DispatcherError`` for anything of ours, or a branch: ``InvalidJob``
(bad input, also a ``ValueError``), ``WaitTimeout`` (also a ``TimeoutError``),
``VastError`` (the route or the worker call failed; ``retryable`` says whether the
same call may succeed later), ``WebhookSignatureError`` (a receiver's check failed).
Errors carry the HTTP status and the server's text, never the API key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.model import Job


class DispatcherError(Exception):
    """Base of every error raised by the dispatcher."""


class ConfigError(DispatcherError, ValueError):
    """A bad setting; the message starts with the environment variable's name."""


class InvalidJob(DispatcherError, ValueError):
    """Bad job input. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason))


class WaitTimeout(DispatcherError, TimeoutError):
    """The job did not end within the wait; ``job`` is how it was last seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g}s")
        self.job = job


class JobNotFound(DispatcherError, LookupError):
    """``wait`` on a job that does not exist (any more): never submitted, its result
    expired (``DISPATCHER_RESULT_TTL``), or Redis lost it (an eviction policy other than
    ``noeviction``, or a restart without AOF)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"no job with id {job_id!r}: never submitted, its result expired "
            "(DISPATCHER_RESULT_TTL), or Redis lost it (run Redis with "
            "maxmemory-policy noeviction and AOF on)")
        self.job_id = job_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id,))


class JobFailed(DispatcherError):
    """A job a reader followed ended without success; ``job`` says how."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} {job.status}"
                         + (f" ({job.error_kind}): {job.error}" if job.error else ""))
        self.job = job


class RetryRefused(DispatcherError):
    """``retry`` of a job that cannot be run again: ``reason`` says why (it succeeded and
    was not forced, its payload is gone, it belongs to another queue)."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} not retried: {reason}")
        self.job_id = job_id
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_id, self.reason))


class WebhookSignatureError(DispatcherError, ValueError):
    """A webhook that fails verification; the message names the header and the problem."""


# --- Vast: the route call and the worker call ------------------------------------------


class VastError(DispatcherError):
    """The route or worker call failed. ``retryable``: whether the same call may succeed."""

    retryable = False

    def __init__(self, message: str, status: int | None = None, text: str = "",
                 *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.text = text
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery pickles errors: keep status, text and retryable across processes.
        return (_rebuild, (type(self), str(self), self.status, self.text, self.retryable))


def _rebuild(cls: type[VastError], message: str, status: int | None, text: str,
             retryable: bool) -> VastError:
    return cls(message, status, text, retryable=retryable)


class RouteError(VastError):
    """The route call failed; no worker was assigned."""


class RouteAuthError(RouteError):
    """401, no key, or a key that cannot be sent: a configuration error. Permanent."""


class RouteRejected(RouteError):
    """400: unknown endpoint or bad parameters. Permanent for this job."""


class RouteRateLimited(RouteError):
    """429: too many route calls for this endpoint and key. Back off, retry."""

    retryable = True


class RouteUnavailable(RouteError):
    """5xx, another unexpected status, a connection error, a timeout or a garbled 200. Retry."""

    retryable = True


class RouteBadAnswer(RouteError):
    """An assignment we must not forward (its url is not an http(s) address with a host)."""


class WorkerError(VastError):
    """The worker call failed."""


class WorkerRejected(WorkerError):
    """The worker refused the job for good (410, 422, 499, other 4xx)."""


class WorkerUnavailable(WorkerError):
    """The worker failed or went away without running the job (408, 429, 5xx, refused).

    Re-route with a fresh assignment, a bounded number of times.
    """

    retryable = True


class WorkerSignatureRejected(WorkerUnavailable):
    """401: assignment refused (or the worker has not loaded Vast's key yet). Re-route."""


class WorkerTimeout(WorkerError):
    """No full answer in time after the request was sent: the GPU may have done the work.

    Not retryable by default: running it again may run a non-idempotent job twice.
    """


class WorkerStreamBroken(WorkerError):
    """A streamed answer broke after some pieces: they are kept; the GPU did work, so the
    job is not run again by default (as for a timeout)."""


class WorkerBadAnswer(WorkerError):
    """The answer cannot be stored (larger than the limit). Permanent."""


class WorkerTLSError(WorkerError):
    """The worker's certificate did not verify: a configuration error (VAST_CA_BUNDLE),
    not a flaky worker, so it is not re-routed."""


class WorkerAborted(WorkerError):
    """We cut the GPU call on purpose: the job was cancelled, or this run lost its lease."""
