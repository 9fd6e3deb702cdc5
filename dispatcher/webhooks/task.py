"""One webhook delivery attempt for a finished job: take it, POST it, record how it went.

Delivery state lives in the job hash's ``webhook_*`` fields and in the hooks
sorted set (retries wait there, due by time, like waiting jobs), never in the
job's status or result: a receiver that is down cannot change what the job did.
The HTTP side (what is retried) is in ``delivery.py``, the signature in ``signing.py``.
"""

from __future__ import annotations

import json
import logging

from dispatcher.model import Job
from dispatcher.runtime import Runtime
from dispatcher.webhooks.delivery import deliver, retry_delay

log = logging.getLogger("dispatcher.webhooks")

# Job fields a receiver gets; delivery bookkeeping stays out of the body.
_HIDDEN = ("webhook_status", "webhook_attempts", "webhook_last_error")


def body_for(job: Job, event: str) -> bytes:
    view = {k: v for k, v in job.to_dict().items() if k not in _HIDDEN}
    return json.dumps({"event": event, "job": view}, separators=(",", ":"),
                      ensure_ascii=False, default=str).encode()


def run_webhook(rt: Runtime, job_id: str, seq: int) -> str:
    s = rt.settings
    # An attempt ends at its deadline (webhook_timeout); the lease only covers a worker
    # that dies mid-attempt. hook_take ends the delivery once its attempts are spent,
    # however many leases ran out.
    lease = s.webhook_timeout + 30.0
    outcome, seq, fields = rt.store.hook_take(job_id, seq, lease, s.webhook_attempts)
    if outcome != "ok":
        if fields.get("webhook_status") == "failed":
            log.warning("job %s webhook: failed, all %d attempts taken (the last left no "
                        "outcome: its worker stopped mid-attempt)", job_id, s.webhook_attempts)
        return outcome
    event = fields.get("webhook_event", "")
    attempts = int(fields.get("webhook_attempts") or 1)
    if not s.webhook_secret:
        detail = ("DISPATCHER_WEBHOOK_SECRET is not set on this worker: "
                  "unsigned webhooks are never sent")
        log.error("job %s webhook: %s", job_id, detail)
        return rt.store.hook_done(job_id, seq, "failed", 0, s.webhook_attempts, detail, None)
    attempt = deliver(
        fields["webhook"], body_for(Job.from_hash(job_id, fields), event),
        secret=s.webhook_secret, delivery_id=fields.get("webhook_delivery_id", job_id),
        event=event, timeout=s.webhook_timeout, allow=s.webhook_allow,
    )
    delay = retry_delay(attempts - 1)
    result = rt.store.hook_done(job_id, seq, attempt.outcome, delay, s.webhook_attempts,
                                attempt.detail, attempt.status)
    level = logging.INFO if result == "delivered" else logging.WARNING
    log.log(level, "job %s webhook attempt %d: %s (%s)", job_id, attempts, result, attempt.detail)
    return result
