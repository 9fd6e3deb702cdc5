"""Input checks for a job. Each failure names the field and the reason.

The same checks run at submit (to refuse bad input at once) and again when a
worker picks the job up (a record written by anything else is not trusted).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import urlsplit

from dispatcher.config import Settings
from dispatcher.errors import InvalidJob
from dispatcher.model import JobSpec
from dispatcher.ssrf import ALLOW_SETTING, AllowList, a_kind, host_name_error, literal_address

JOB_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
# Vast's endpoint names are short and printable ("vLLM-Qwen3-8B"); each name keeps a few
# Redis keys, so a name is bounded too.
ENDPOINT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}")
MAX_PATH = 2048


def check_endpoint(endpoint: Any) -> str:
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise InvalidJob("endpoint", "must be a non-empty string (the Vast endpoint name)")
    if endpoint != endpoint.strip():
        raise InvalidJob("endpoint", "must not start or end with whitespace")
    if not ENDPOINT_RE.fullmatch(endpoint):
        raise InvalidJob("endpoint", "must be 1-128 characters of letters, digits and "
                         "'_.:@+-', starting with a letter or digit")
    return endpoint


def check_cost(cost: Any) -> float:
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        raise InvalidJob("cost", f"must be a number, got {type(cost).__name__}")
    if math.isnan(cost) or math.isinf(cost):
        raise InvalidJob("cost", "must be a finite number")
    if cost < 0:
        raise InvalidJob("cost", f"must be >= 0, got {cost}")
    return float(cost)


def check_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidJob("path", "must be a non-empty string such as '/v1/completions'")
    if "://" in path or not path.startswith("/"):
        raise InvalidJob("path", f"must start with '/' and hold no scheme or host, got {path!r}")
    if any(c.isspace() for c in path):
        raise InvalidJob("path", "must not contain whitespace")
    if not path.isascii() or not path.isprintable():
        raise InvalidJob("path", "must be printable ASCII (percent-encode anything else)")
    if len(path) > MAX_PATH:
        raise InvalidJob("path", f"must be at most {MAX_PATH} characters, got {len(path)}")
    if ".." in path.split("?", 1)[0].split("/"):
        raise InvalidJob("path", "must not hold a '..' segment")
    return path


def check_seconds(field: str, value: Any, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJob(field, f"must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        raise InvalidJob(field, "must be a finite number of seconds") from None
    if not math.isfinite(seconds):
        raise InvalidJob(field, "must be a finite number of seconds")
    if seconds <= 0:
        raise InvalidJob(field, f"must be > 0 seconds, got {value}")
    if upper is not None and value > upper:
        raise InvalidJob(field, f"must be <= {upper:g} seconds (the configured maximum)")
    return float(value)


def check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidJob("priority", f"must be an integer from 0 to 9, got {priority!r}")
    return priority


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidJob(
            "job_id", "must be 1-128 characters of letters, digits, '_', '-', '.', ':'"
        )
    return job_id


def encode_payload(payload: Any, limit: int) -> str:
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidJob("payload", f"must be JSON-serialisable: {e}") from None
    except RecursionError:
        raise InvalidJob("payload", "is nested too deeply to serialise") from None
    size = len(text.encode())
    if size > limit:
        raise InvalidJob("payload", f"is {size} bytes, over the limit of {limit} bytes")
    return text


def check_job(
    settings: Settings,
    endpoint: Any,
    payload: Any,
    *,
    cost: Any,
    path: Any,
    max_wait: Any,
    timeout: Any,
    priority: Any = 0,
    check_payload: bool = True,
) -> JobSpec:
    return JobSpec(
        endpoint=check_endpoint(endpoint),
        payload_json=encode_payload(payload, settings.max_payload_bytes) if check_payload else None,
        cost=check_cost(cost),
        path=check_path(path),
        max_wait=check_seconds("max_wait", max_wait, settings.max_max_wait),
        timeout=check_seconds("timeout", timeout, settings.max_timeout),
        priority=check_priority(priority),
    )


# A job's own bound on re-routes (``max_reroutes``): each may run the job on a GPU again.
MAX_JOB_REROUTES = 100
# What a job may opt in to being re-run after (``retry_on``): ends where the GPU may have
# done the work, so never re-run by default. Worker errors before any work (worker_failed:
# 408, 429, 5xx, refused) are always re-routed.
RETRY_ON = ("worker_timeout", "worker_stream_broken")


def check_retry_policy(max_reroutes: Any, retry_on: Any) -> tuple[int | None, str]:
    """The job's own re-route bound (None: DISPATCHER_MAX_REROUTES) and what it may be
    re-run after, as stored (comma-separated)."""
    if max_reroutes is not None and (isinstance(max_reroutes, bool)
                                     or not isinstance(max_reroutes, int)
                                     or not 0 <= max_reroutes <= MAX_JOB_REROUTES):
        raise InvalidJob("max_reroutes", f"must be an integer from 0 to {MAX_JOB_REROUTES}, "
                                         f"got {max_reroutes!r}")
    if retry_on is None:
        return max_reroutes, ""
    if isinstance(retry_on, str) or not isinstance(retry_on, list | tuple):
        raise InvalidJob("retry_on", f"must be a list of {list(RETRY_ON)}, got {retry_on!r}")
    bad = [k for k in retry_on if k not in RETRY_ON]
    if bad:
        raise InvalidJob("retry_on", f"unknown error kind(s) {bad}; choose from "
                                     f"{list(RETRY_ON)} (worker_failed is always re-routed)")
    return max_reroutes, ",".join(dict.fromkeys(retry_on))


# "started": the job got a GPU (opt-in; "completed" is any of the ends after it).
WEBHOOK_EVENTS = ("completed", "succeeded", "failed", "expired", "cancelled", "started")


def check_webhook(settings: Settings, url: Any, events: Any) -> tuple[str, str]:
    """The webhook URL and its events as stored (comma-separated).

    "completed" means any end: succeeded, failed, expired or cancelled.
    """
    if not isinstance(url, str) or not url:
        raise InvalidJob("webhook", "must be an http(s) URL string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as e:
        raise InvalidJob("webhook", f"not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidJob("webhook", f"must be an http:// or https:// URL with a host, got {url!r}")
    if any(c.isspace() for c in url):
        raise InvalidJob("webhook", "must not contain whitespace")
    _check_webhook_host(settings, parts.hostname)
    if isinstance(events, str) or not isinstance(events, list | tuple) or not events:
        raise InvalidJob("webhook_events", f"must be a non-empty list of {list(WEBHOOK_EVENTS)}")
    bad = [e for e in events if e not in WEBHOOK_EVENTS]
    if bad:
        raise InvalidJob("webhook_events",
                         f"unknown event(s) {bad}; choose from {list(WEBHOOK_EVENTS)}")
    if not settings.webhook_secret:
        raise InvalidJob("webhook", "DISPATCHER_WEBHOOK_SECRET is not set: deliveries are "
                                    "signed with it, and unsigned ones are never sent")
    return url, ",".join(dict.fromkeys(events))


def _check_webhook_host(settings: Settings, host: str) -> None:
    """A literal address the delivery would refuse is refused now (issue 11 item 3); a
    name is checked when it is resolved, at each delivery (``dispatcher/ssrf.py``)."""
    reason = host_name_error(host)
    if reason:
        raise InvalidJob("webhook", reason)
    ip = literal_address(host)
    allow = AllowList.parse(settings.webhook_allow)
    kind = None if ip is None or allow.allows_host(host) else allow.refusal(ip)
    if kind is not None:
        raise InvalidJob("webhook", f"{host[:80]} is {a_kind(kind)} address ({ip}): webhooks may "
                                    f"not go there unless {ALLOW_SETTING} lists it")
