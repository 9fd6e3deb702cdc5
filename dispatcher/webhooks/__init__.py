"""Webhooks: a signed POST of a finished job to the submitter's URL, retried through Redis.

``signing.py`` is for receivers too (``verify``); ``delivery.py`` makes one attempt;
``task.py`` runs an attempt for a worker and records it.
"""

from dispatcher.webhooks.signing import WebhookSignatureError, sign, verify

__all__ = ["WebhookSignatureError", "sign", "verify"]
