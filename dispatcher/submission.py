"""What a submit writes: the checked job record and its first message.

Shared by the sync client, the asyncio client and the HTTP gateway, so that every way
in refuses the same input with the same ``InvalidJob`` and writes the same record.
No Redis, no Celery: building a job is pure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.config import Settings
from dispatcher.errors import InvalidJob, JobNotFound, RetryRefused
from dispatcher.model import Envelope, Status
from dispatcher.validation import check_job, check_job_id, check_retry_policy, check_webhook

# The arguments of submit(), as a batch item or a gateway body names them.
SUBMIT_FIELDS = ("endpoint", "payload", "path", "cost", "max_wait", "timeout", "priority",
                 "job_id", "webhook", "webhook_events", "stream", "max_reroutes", "retry_on")
REQUIRED_FIELDS = ("endpoint", "payload", "path")


@dataclass(frozen=True)
class NewJob:
    """A job ready to be written (``fields``) and published (``envelope``)."""

    id: str
    fields: dict[str, Any]
    envelope: Envelope


def new_job(
    settings: Settings,
    endpoint: Any,
    payload: Any,
    *,
    path: Any,
    cost: Any = 100.0,
    max_wait: Any = None,
    timeout: Any = None,
    priority: Any = 0,
    job_id: Any = None,
    webhook: Any = None,
    webhook_events: Any = ("completed",),
    stream: Any = False,
    max_reroutes: Any = None,
    retry_on: Any = None,
) -> NewJob:
    """Check a submit's arguments; raises ``InvalidJob`` naming the bad field."""
    s = settings
    spec = check_job(
        s, endpoint, payload, cost=cost, path=path,
        max_wait=s.default_max_wait if max_wait is None else max_wait,
        timeout=s.default_timeout if timeout is None else timeout,
        priority=priority,
    )
    hook = None if webhook is None else check_webhook(s, webhook, webhook_events)
    if not isinstance(stream, bool):
        raise InvalidJob("stream", f"must be true or false, got {stream!r}")
    reroutes, rerun_after = check_retry_policy(max_reroutes, retry_on)
    jid = uuid.uuid4().hex if job_id is None else check_job_id(job_id)
    fields: dict[str, Any] = {
        "id": jid,
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
    if stream:
        fields["stream"] = 1
    if reroutes is not None:
        fields["max_reroutes"] = reroutes
    if rerun_after:
        fields["retry_on"] = rerun_after
    return NewJob(jid, fields, Envelope("dispatch", jid, 0, spec.priority, spec.endpoint))


def job_from_mapping(settings: Settings, item: Any, where: str = "",
                     defaults: Mapping[str, Any] | None = None) -> NewJob:
    """A job given as a mapping of submit's arguments (a batch item, a JSON body).

    ``where`` prefixes field names in errors (``jobs[3].``); unknown and missing
    fields are refused by name, like bad values.
    """
    if not isinstance(item, Mapping):
        raise InvalidJob(where.rstrip(".") or "body",
                         f"must be an object of {list(SUBMIT_FIELDS)}, got "
                         f"{type(item).__name__}")
    args = {**(defaults or {}), **item}
    unknown = [k for k in args if k not in SUBMIT_FIELDS]
    if unknown:
        raise InvalidJob(f"{where}{unknown[0]}",
                         f"unknown field; a job takes {list(SUBMIT_FIELDS)}")
    missing = [k for k in REQUIRED_FIELDS if k not in args]
    if missing:
        raise InvalidJob(f"{where}{missing[0]}", "is required")
    try:
        return new_job(settings, **args)
    except InvalidJob as e:
        if not where:
            raise
        raise InvalidJob(f"{where}{e.field}", e.reason) from None


def new_jobs(settings: Settings, jobs: Iterable[Any]) -> list[NewJob]:
    """Every job of a batch checked before anything is written: the first bad one fails
    the whole batch, named by its index (``jobs[3].cost: must be >= 0, got -1``)."""
    if isinstance(jobs, str | bytes | Mapping) or not isinstance(jobs, Iterable):
        raise InvalidJob("jobs", "must be a list of job objects")
    return [job_from_mapping(settings, item, f"jobs[{i}].") for i, item in enumerate(jobs)]


def first_of_each(part: Sequence[NewJob], created: Sequence[bool]) -> list[Envelope]:
    """The messages to publish: one per job this call created (a job_id repeated in the
    batch, or submitted before, is the same job: never a second run)."""
    return [j.envelope for j, new in zip(part, created, strict=True) if new]


# Why ``retry`` did not queue a job, by the retry script's outcome (store/lua/retry.lua).
RETRY_REFUSALS = {
    "succeeded": "it succeeded (force it to run it again)",
    "no_payload": "it succeeded and its payload was dropped at its end (a success keeps its "
                  "result, not its payload): submit it again",
    "other_queue": "it belongs to another queue (DISPATCHER_QUEUE)",
    "unknown": "no such job: never submitted, or its result expired (DISPATCHER_RESULT_TTL)",
}
# retry's outcomes for a job that has not ended: nothing to do, it will run.
NOT_ENDED = ("queued", "waiting", "running")


def retry_answer(job_id: str, outcome: str) -> bool:
    """What ``retry`` returns for an outcome: True queued, False not ended; or raises."""
    if outcome == "ok":
        return True
    if outcome in NOT_ENDED:
        return False
    if outcome == "unknown":
        raise JobNotFound(job_id)
    raise RetryRefused(job_id, RETRY_REFUSALS.get(outcome, outcome))
