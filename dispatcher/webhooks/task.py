"""One webhook delivery attempt for a finished job: take it, POST it, record how it went.

Delivery state lives in the job hash's ``webhook_*`` fields and in the hooks
sorted set (retries wait there, due by time, like waiting jobs), never in the
job's status or result: a receiver that is down cannot change what the job did.
The HTTP side (what is retried) is in ``delivery.py``, the signature in ``signing.py``.
"""

from __future__ import annotations

import json
import logging
import threading

import requests

from dispatcher.model import Job
from dispatcher.runtime import Runtime
from dispatcher.webhooks.delivery import deliver, retry_delay

log = logging.getLogger("dispatcher.webhooks")

# Job fields a receiver gets; delivery bookkeeping stays out of the body.
_HIDDEN = ("webhook_status", "webhook_attempts", "webhook_last_error")

_local = threading.local()


def _session() -> requests.Session:
    """One keep-alive session per worker thread (requests sessions are not thread-safe)."""
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
    return s


def body_for(job: Job, event: str) -> bytes:
    view = {k: v for k, v in job.to_dict().items() if k not in _HIDDEN}
    return json.dumps({"event": event, "job": view}, separators=(",", ":"),
                      ensure_ascii=False, default=str).encode()


def run_webhook(rt: Runtime, job_id: str, seq: int) -> str:
    s = rt.settings
    lease = s.webhook_timeout + 30.0  # connect + read timeouts, with slack
    outcome, seq, fields = rt.store.hook_take(job_id, seq, lease)
    if outcome != "ok":
        return outcome
    event = fields.get("webhook_event", "")
    attempts = int(fields.get("webhook_attempts") or 1)
    if not s.webhook_secret:
        detail = ("DISPATCHER_WEBHOOK_SECRET is not set on this worker: "
                  "unsigned webhooks are never sent")
        log.error("job %s webhook: %s", job_id, detail)
        return rt.store.hook_done(job_id, seq, "failed", 0, s.webhook_attempts, detail, None)
    attempt = deliver(
        _session(), fields["webhook"], body_for(Job.from_hash(job_id, fields), event),
        secret=s.webhook_secret, delivery_id=fields.get("webhook_delivery_id", job_id),
        event=event, read_timeout=s.webhook_timeout,
    )
    delay = retry_delay(attempts - 1)
    result = rt.store.hook_done(job_id, seq, attempt.outcome, delay, s.webhook_attempts,
                                attempt.detail, attempt.status)
    level = logging.INFO if result == "delivered" else logging.WARNING
    log.log(level, "job %s webhook attempt %d: %s (%s)", job_id, attempts, result, attempt.detail)
    return result
