"""How the emulator's router signs an assignment and its workers check it.

Vast signs with RSA, and the signed message has changed between versions, so a
dispatcher must forward ``auth_data`` verbatim whatever it holds. An HMAC-SHA256 with a
per-emulator random secret keeps exactly that property (any edit, or an assignment
from another emulator, fails) with no crypto dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SIGNED_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "url")


def _message(auth: dict[str, Any]) -> bytes:
    fields = {k: auth.get(k) for k in SIGNED_FIELDS}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: bytes, auth: dict[str, Any]) -> str:
    """The signature of an assignment's fields (``signature`` itself excluded)."""
    return hmac.new(secret, _message(auth), hashlib.sha256).hexdigest()


def verify(secret: bytes, auth: dict[str, Any]) -> bool:
    sig = auth.get("signature")
    try:
        expected = sign(secret, auth)
    except (TypeError, ValueError):  # fields JSON cannot encode: not ours
        return False
    return isinstance(sig, str) and hmac.compare_digest(sig, expected)
