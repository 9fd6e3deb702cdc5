"""What Vast's route API and GPU workers say, as Python values, and how to read them.

An assignment is kept verbatim (it is forwarded as ``auth_data``); everything else
here turns answers into text fit for a job's ``error``: decoded, redacted, short.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

REPLAY_TIMEOUT = 60.0  # the official client's: Vast keeps a request_idx's place this long
TEXT_LIMIT = 2000  # characters of server text kept on an error
DETAIL_LIMIT = 500  # characters of it quoted in the message


def secret_forms(secret: str) -> list[str]:
    """The ways a secret shows up in error texts: as is, escaped (repr, JSON), quoted."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1],
             secret.encode("unicode_escape").decode("ascii", "replace")}
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every form of ``secret`` masked (redact before truncating)."""
    if secret:
        for form in secret_forms(secret):
            if form in text:
                text = text.replace(form, "***")
    return text


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Assignment:
    """A route answer naming a worker, kept verbatim: it is forwarded as ``auth_data``.

    Only ``url`` is required (the official client's rule). The published schema lists
    ``endpoint, url, cost, reqnum, signature, __request_id``; live answers add
    ``request_idx``; fields may come and go, and the signature may cover any of them,
    so nothing here adds, drops or rewrites one. What we read for ourselves has a default.
    """

    auth_data: dict[str, Any]

    @property
    def url(self) -> str:
        return str(self.auth_data["url"])

    @property
    def reqnum(self) -> Any:
        """For logs only; absent in some answers."""
        return self.auth_data.get("reqnum")

    @property
    def request_idx(self) -> int | None:
        """Vast's queue index, if the answer has one (the published schema does not)."""
        return int_or_none(self.auth_data.get("request_idx"))


@dataclass(frozen=True)
class NoWorker:
    """Vast has no worker for the job yet; ``status`` is opaque text for humans."""

    status: str
    request_idx: int | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class WorkerResponse:
    status: int
    body: Any  # parsed JSON if the worker said JSON, else text
    elapsed: float  # seconds, the whole call


def is_http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a malformed IPv6 host or port
        return False


def error_text(text: str) -> str:
    """The server's ``{"error": ...}`` message, from the already redacted text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text[:DETAIL_LIMIT] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:DETAIL_LIMIT]
    return text[:DETAIL_LIMIT]


def _charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip("\"'")
    return "utf-8"  # not ISO-8859-1 as requests assumes for text/*: workers speak UTF-8


def decode_text(raw: bytes | bytearray, content_type: str | None) -> str:
    try:
        return raw.decode(_charset(content_type), "replace")
    except LookupError:  # an unknown charset name
        return raw.decode("utf-8", "replace")


def decode_body(raw: bytes | bytearray, content_type: str | None) -> Any:
    """JSON if the worker says so (or says nothing and it parses), else text."""
    text = decode_text(raw, content_type)
    ctype = (content_type or "").split(";")[0].strip().lower()
    if "json" in ctype or (not ctype and text.lstrip()[:1] in ("{", "[")):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
