"""The receivers' import path the README gave first; ``dispatcher.webhooks`` is the home."""

from dispatcher.webhooks.signing import WebhookSignatureError, sign, verify

__all__ = ["WebhookSignatureError", "sign", "verify"]
