"""Webhook signatures, for receivers as well as for us: ``sign`` and ``verify``.

The signature is HMAC-SHA256 over ``<delivery id>.<timestamp>.<body>``: signing the id and
the time stops a captured body being replayed under another id (receivers de-duplicate on
the id) or much later (receivers reject old timestamps).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from dispatcher.errors import WebhookSignatureError

__all__ = ["DELIVERY_HEADER", "EVENT_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER",
           "WebhookSignatureError", "sign", "verify"]

DELIVERY_HEADER = "X-Dispatcher-Delivery"
EVENT_HEADER = "X-Dispatcher-Event"
TIMESTAMP_HEADER = "X-Dispatcher-Timestamp"
SIGNATURE_HEADER = "X-Dispatcher-Signature"


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """Return ``sha256=<hex>``; id and time are signed so a body cannot be replayed apart."""
    if not secret:
        # An empty key makes a "signature" anyone can compute: refuse instead of pretending.
        raise ValueError("webhook secret is empty")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("body must be the raw request bytes, not a decoded string")
    message = f"{delivery_id}.{int(timestamp)}.".encode() + bytes(body)
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: float = 300,
           now: float | None = None) -> str:
    """Check a delivery's signature, then its age; return its delivery id.

    Receivers should de-duplicate on the returned id: one delivery can arrive twice (a
    retry after the receiver answered 5xx or the connection dropped). ``headers`` is any
    mapping of the request's headers (lookup ignores case, and WSGI ``HTTP_*`` keys work);
    ``body`` must be the raw bytes as received, before any JSON parsing. An empty secret
    raises a plain ValueError: that is a receiver misconfiguration, not a bad request.
    """
    if not secret:
        raise ValueError("webhook secret is empty: refusing to verify with it")
    lowered = {str(k).lower(): v for k, v in headers.items()}

    def get(name: str) -> str:
        value = lowered.get(name.lower())
        if value is None:  # Django's request.META and other WSGI environs
            value = lowered.get("http_" + name.lower().replace("-", "_"))
        value = (value or "").strip()
        if not value:
            raise WebhookSignatureError(f"{name} header is missing")
        return value

    delivery_id = get(DELIVERY_HEADER)
    raw_ts = get(TIMESTAMP_HEADER)
    signature = get(SIGNATURE_HEADER)
    # Strict digits: int() would also take "+1_700_000_000" or non-ASCII digits.
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 15):
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} header is not Unix seconds: "
                                    f"{raw_ts[:40]!r}")
    if not signature.startswith("sha256="):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} header is not 'sha256=<hex>'")
    ts = int(raw_ts)
    expected = sign(secret, delivery_id, ts, body)
    # Bytes, not str: compare_digest raises TypeError on non-ASCII str, and a header is
    # attacker-controlled.
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body "
                                    "(wrong secret, or the body or headers were changed)")
    age = (time.time() if now is None else now) - ts
    if age > tolerance:
        raise WebhookSignatureError(
            f"{TIMESTAMP_HEADER} is too old: {age:.0f}s ago, over the {tolerance:g}s tolerance "
            "(a replay, or this clock is wrong)")
    if -age > tolerance:
        raise WebhookSignatureError(
            f"{TIMESTAMP_HEADER} is too new: {-age:.0f}s in the future, over the "
            f"{tolerance:g}s tolerance (the sender's or this clock is wrong)")
    return delivery_id
