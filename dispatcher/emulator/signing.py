"""Signing as Vast signs: RSA PKCS#1 v1.5 over SHA-256 of ``json.dumps({"url": url},
indent=4, sort_keys=True)``, the signature base64. The public key is served as PEM at
``GET /pubkey/``, where Vast's PyWorker fetches it (``$REPORT_ADDR/pubkey/``).

The message is the url alone and PKCS#1 v1.5 is deterministic, so a worker's signature
never changes while the key does not: it is computed once per url (about 1 ms with a
2048-bit key) and reused, which keeps the router's hot path cheap. Since the signature
covers nothing else, the emulated workers check separately that the dispatcher forwarded
the rest of the assignment verbatim (see ``workers``).

Key generation takes tens of milliseconds, and test suites start hundreds of emulators,
so keys come from a per-process pool: an emulator takes a key nobody running holds and
gives it back when it stops. Two emulators alive at once never share a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from typing import Any

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("the Vast emulator signs with RSA and needs the 'cryptography' package: "
                      "pip install 'vast-dispatcher[emulator]'") from e

KEY_BITS = 2048


def message(url: str) -> bytes:
    """The bytes Vast signs for an assignment: the url, as indented sorted JSON."""
    return json.dumps({"url": url}, indent=4, sort_keys=True).encode()


class SigningKey:
    """An RSA key pair with the signatures it made and checked cached per url."""

    def __init__(self, private_key: rsa.RSAPrivateKey | None = None) -> None:
        self._private = private_key or rsa.generate_private_key(65537, KEY_BITS)
        self._public = self._private.public_key()
        self.public_pem: bytes = self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._signed: dict[str, str] = {}
        self._verified: set[tuple[str, str]] = set()

    def sign(self, url: str) -> str:
        sig = self._signed.get(url)
        if sig is None:
            raw = self._private.sign(message(url), padding.PKCS1v15(), hashes.SHA256())
            sig = self._signed[url] = base64.b64encode(raw).decode()
        return sig

    def verify(self, url: Any, signature: Any) -> bool:
        """True if ``signature`` is this key's for ``url``; False for anything else."""
        if not isinstance(url, str) or not isinstance(signature, str):
            return False
        if (url, signature) in self._verified:
            return True
        try:
            raw = base64.b64decode(signature, validate=True)
            self._public.verify(raw, message(url), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        if len(self._verified) < 10_000:  # genuine pairs: one per worker url
            self._verified.add((url, signature))
        return True


_pool: list[SigningKey] = []
_pool_lock = threading.Lock()


def take_key() -> SigningKey:
    """A key no running emulator holds: from the pool, else a new one."""
    with _pool_lock:
        if _pool:
            return _pool.pop()
    return SigningKey()


def give_back(key: SigningKey) -> None:
    with _pool_lock:
        _pool.append(key)
