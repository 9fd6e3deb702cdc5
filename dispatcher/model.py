"""What a job is, in Python: its statuses, its submitted spec, the view an app reads,
and the envelope a Celery message carries.

A job is one Redis hash (``store/keys.py`` names it) with flat string fields so that
an app in any language can poll it with ``HGETALL`` or ``HMGET``; the field names
read here are a public, stable interface (see the README).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal


class Status(StrEnum):
    """A job's status. The Lua scripts get these names from ``store/keys.py``."""

    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # no such job, or its result expired: never stored


STATUSES = tuple(s.value for s in Status if s is not Status.UNKNOWN)
TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED})
PENDING = frozenset({Status.QUEUED, Status.WAITING})  # not on a GPU yet
LIVE = (Status.QUEUED, Status.WAITING, Status.RUNNING)
ENDED = (Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED)

# What a store transition answered (see the scripts in store/lua/).
ClaimOutcome = Literal["ok", "deferred", "unknown", "done", "stale", "busy"]
ScheduleOutcome = Literal["ok", "unknown", "lost", "succeeded", "failed", "expired",
                          "cancelled"]
# finish: "ok", or the status the job already had (the first terminal write wins).
# "lost": the run's lease was taken over; a stale run writes nothing.
FinishOutcome = Literal["ok", "unknown", "lost", "succeeded", "failed", "expired",
                        "cancelled"]
HookOutcome = Literal["ok", "unknown", "done", "stale"]
# retry: "ok" (queued again), the live status it already has (nothing to do), "unknown",
# "succeeded" (a success is re-run only when forced), "no_payload" (a success's payload is
# dropped at its end), "other_queue" (it belongs to another DISPATCHER_QUEUE).
RetryOutcome = Literal["ok", "unknown", "queued", "waiting", "running", "succeeded",
                       "no_payload", "other_queue"]
# How a webhook attempt went (webhooks/delivery.py), and the delivery's state.
HookResult = Literal["delivered", "retry", "failed"]
WebhookStatus = Literal["pending", "retrying", "delivered", "failed"]
# What one dispatch run did, for logs and tests: a status it stored, "waiting" (put
# back to wait for a GPU), a claim outcome, or "dropped" (cancelled before the GPU call).
RunOutcome = str

Task = Literal["dispatch", "webhook"]


@dataclass(frozen=True)
class Envelope:
    """What one Celery message carries: a job id and its schedule number, never the payload.

    For a dispatch the number is the job's ``seq``; for a webhook delivery its
    ``webhook_seq``. ``priority`` and ``endpoint`` are for the broker and for Flower.
    """

    task: Task
    id: str
    seq: int
    priority: int = 0
    endpoint: str = ""


@dataclass(frozen=True)
class JobSpec:
    """A submitted job's checked settings (``validation.check_job`` makes one)."""

    endpoint: str
    payload_json: str | None
    cost: float
    path: str
    max_wait: float
    timeout: float
    priority: int


def _num(raw: str | None, kind: type = float) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return kind(raw) if kind is not int else int(float(raw))
    except ValueError:
        return None


def decode_result(raw: str | None, result_type: str | None) -> Any:
    if raw is None:
        return None
    if result_type == "json":
        return json.loads(raw)
    return raw


@dataclass(frozen=True)
class Job:
    """What an app sees of a job. ``status == "unknown"`` means no such job."""

    id: str
    status: str
    endpoint: str | None = None
    cost: float | None = None
    path: str | None = None
    result: Any = None
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 0
    route_calls: int = 0
    worker_attempts: int = 0
    reroutes: int = 0
    worker_url: str | None = None
    worker_status: int | None = None
    wait_reason: str | None = None
    next_poll_at: float | None = None
    request_idx: int | None = None
    max_wait: float | None = None
    timeout: float | None = None
    priority: int = 0
    created_at: float | None = None
    assigned_at: float | None = None
    finished_at: float | None = None
    # Webhook delivery, apart from the job's own status: pending, retrying,
    # delivered or failed. A webhook failure never changes the job's result.
    webhook: str | None = None
    webhook_status: str | None = None
    webhook_attempts: int = 0
    webhook_last_error: str | None = None
    webhook_delivery_id: str | None = None
    stream: bool = False  # its pieces go to a Redis stream as they arrive
    # Re-runs (``retry``): how many, and why the run before the last one ended.
    retries: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def known(self) -> bool:
        return self.status != Status.UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unknown(cls, job_id: str) -> Job:
        return cls(id=job_id, status=Status.UNKNOWN, error=f"no job with id {job_id!r}")

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> Job:
        if not h:
            return cls.unknown(job_id)
        return cls(
            id=job_id,
            status=h.get("status", Status.UNKNOWN),
            endpoint=h.get("endpoint"),
            cost=_num(h.get("cost")),
            path=h.get("path"),
            result=decode_result(h.get("result"), h.get("result_type")),
            error=h.get("error") or None,
            error_kind=h.get("error_kind") or None,
            attempts=_num(h.get("attempts"), int) or 0,
            route_calls=_num(h.get("route_calls"), int) or 0,
            worker_attempts=_num(h.get("worker_attempts"), int) or 0,
            reroutes=_num(h.get("reroutes"), int) or 0,
            worker_url=h.get("worker_url") or None,
            worker_status=_num(h.get("worker_status"), int),
            wait_reason=h.get("wait_reason") or None,
            next_poll_at=_num(h.get("next_poll_at")),
            request_idx=_num(h.get("request_idx"), int),
            max_wait=_num(h.get("max_wait")),
            timeout=_num(h.get("timeout")),
            priority=_num(h.get("priority"), int) or 0,
            created_at=_num(h.get("created_at")),
            assigned_at=_num(h.get("assigned_at")),
            finished_at=_num(h.get("finished_at")),
            webhook=h.get("webhook") or None,
            webhook_status=h.get("webhook_status") or None,
            webhook_attempts=_num(h.get("webhook_attempts"), int) or 0,
            webhook_last_error=h.get("webhook_last_error") or None,
            webhook_delivery_id=h.get("webhook_delivery_id") or None,
            stream=h.get("stream") == "1",
            retries=_num(h.get("retries"), int) or 0,
            last_error=h.get("last_error") or None,
            last_error_kind=h.get("last_error_kind") or None,
        )
