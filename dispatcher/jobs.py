"""The job record: its Redis layout and its Python view.

A job is one Redis hash, ``dispatcher:job:<id>``, with flat string fields so
that an app in any language can poll it with ``HGETALL`` or ``HMGET``. The
field names below are a public, stable interface (see the README).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

KEY_PREFIX = "dispatcher:"
JOB_PREFIX = KEY_PREFIX + "job:"

QUEUED = "queued"
WAITING = "waiting"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
EXPIRED = "expired"
CANCELLED = "cancelled"
UNKNOWN = "unknown"

STATUSES = (QUEUED, WAITING, RUNNING, SUCCEEDED, FAILED, EXPIRED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, EXPIRED, CANCELLED})


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def waiting_key(queue: str) -> str:
    """Sorted set of jobs waiting for a worker, scored by due time (Redis clock)."""
    return f"{KEY_PREFIX}waiting:{queue}"


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

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def known(self) -> bool:
        return self.status != UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unknown(cls, job_id: str) -> Job:
        return cls(id=job_id, status=UNKNOWN, error=f"no job with id {job_id!r}")

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> Job:
        if not h:
            return cls.unknown(job_id)
        return cls(
            id=job_id,
            status=h.get("status", UNKNOWN),
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
        )
