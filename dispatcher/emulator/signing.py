"""How the emulator's router signs an assignment and its workers check it.

Vast signs with RSA; the scheme has changed between versions, and a dispatcher
must forward ``auth_data`` verbatim whatever it is. An HMAC with a per-emulator
secret keeps the same property with no crypto dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SIGNED_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "url")


def _message(auth: dict[str, Any]) -> bytes:
    return json.dumps({k: auth.get(k) for k in SIGNED_FIELDS}, sort_keys=True).encode()


def sign(secret: bytes, auth: dict[str, Any]) -> str:
    return hmac.new(secret, _message(auth), hashlib.sha256).hexdigest()


def verify(secret: bytes, auth: dict[str, Any]) -> bool:
    sig = auth.get("signature")
    return isinstance(sig, str) and hmac.compare_digest(sig, sign(secret, auth))
