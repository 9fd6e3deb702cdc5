"""The HTTP side of webhooks: sign, make one attempt, say whether to retry; and verify.

The signature is HMAC-SHA256 over ``<delivery id>.<timestamp>.<body>``: signing the id and
the time stops a captured body being replayed under another id or much later. A read
timeout is never retried: the request reached the receiver, which may have acted on it,
and a retry would deliver twice. Connection errors (nothing was received) and 5xx, 408,
429 are retried by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests

MAX_ANSWER_BYTES = 64 * 1024  # read at most this much of a receiver's answer
RETRY_STATUSES = frozenset({408, 429})


class WebhookSignatureError(ValueError):
    """A webhook that fails verification; the message names the header and the problem."""


@dataclass(frozen=True)
class Attempt:
    outcome: str  # delivered | retry | failed
    status: int | None
    detail: str


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    message = f"{delivery_id}.{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: float = 300,
           now: float | None = None) -> str:
    """Check a delivery's signature and age; returns its delivery id (de-duplicate on it)."""
    h = {k.lower(): v for k, v in headers.items()}

    def get(name: str) -> str:
        value = h.get(name.lower())
        if not value:
            raise WebhookSignatureError(f"{name}: header missing")
        return value

    delivery_id = get("X-Dispatcher-Delivery")
    raw_ts = get("X-Dispatcher-Timestamp")
    signature = get("X-Dispatcher-Signature")
    try:
        ts = int(raw_ts)
    except ValueError:
        raise WebhookSignatureError(f"X-Dispatcher-Timestamp: not an integer: {raw_ts!r}") from None
    age = (time.time() if now is None else now) - ts
    if abs(age) > tolerance:
        raise WebhookSignatureError(
            f"X-Dispatcher-Timestamp: {age:+.0f}s from now, outside +-{tolerance:g}s")
    if not hmac.compare_digest(sign(secret, delivery_id, ts, body), signature):
        raise WebhookSignatureError("X-Dispatcher-Signature: does not match the body and secret")
    return delivery_id


def deliver(session: requests.Session, url: str, body: bytes, *, secret: str,
            delivery_id: str, event: str, connect_timeout: float = 5.0,
            read_timeout: float = 10.0, now: Callable[[], float] = time.time) -> Attempt:
    """One POST. Never raises for network trouble: every outcome is an Attempt."""
    ts = int(now())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "vast-dispatcher-webhook",
        "X-Dispatcher-Delivery": delivery_id,
        "X-Dispatcher-Event": event,
        "X-Dispatcher-Timestamp": str(ts),
        "X-Dispatcher-Signature": sign(secret, delivery_id, ts, body),
    }
    try:
        r = session.post(url, data=body, headers=headers, timeout=(connect_timeout, read_timeout),
                         allow_redirects=False, stream=True)
    except requests.exceptions.ConnectTimeout:
        return Attempt("retry", None, f"connect timeout after {connect_timeout:g}s")
    except requests.exceptions.ReadTimeout:
        return Attempt("failed", None, f"read timeout after {read_timeout:g}s: not retried, "
                                       "the receiver may have processed it")
    except requests.exceptions.SSLError as e:
        return Attempt("failed", None, f"TLS error: {_reason(e)}")
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema) as e:
        return Attempt("failed", None, f"invalid webhook URL: {_reason(e)}")
    except requests.exceptions.ConnectionError as e:
        # Refused, DNS, or the receiver closed before any answer: nothing was processed
        # as far as HTTP can tell, so a retry is the useful choice.
        return Attempt("retry", None, f"connection error: {_reason(e)}")
    except requests.exceptions.RequestException as e:
        return Attempt("failed", None, f"{type(e).__name__}: {_reason(e)}")
    with r:
        try:
            text = r.raw.read(MAX_ANSWER_BYTES, decode_content=True) or b""
        except Exception:  # the answer's status is what counts
            text = b""
    status = r.status_code
    snippet = text[:200].decode("utf-8", "replace").strip()
    if 200 <= status < 300:
        return Attempt("delivered", status, f"HTTP {status}")
    if status >= 500 or status in RETRY_STATUSES:
        return Attempt("retry", status, f"HTTP {status} from receiver")
    return Attempt("failed", status, f"HTTP {status} from receiver, not retried: {snippet}")


def retry_delay(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, never under ``base / 2``."""
    return max(base / 2, random.uniform(0, min(cap, base * 2 ** min(attempt, 30))))


def _reason(e: Exception) -> str:
    """The innermost reason, short; exception text holds the URL, never the secret."""
    text = str(e.args[0] if e.args else e)
    return text[:300]
