"""One webhook POST: sign it, make the attempt, say whether to retry.

Which outcomes are retried follows one rule: retry only when the receiver cannot have acted
on the request, or said it did not (5xx, 408, 429). Connection errors before any answer
are retried. A read timeout is never retried: the request was sent and the receiver may
have processed it, so a retry could deliver twice; receivers de-duplicate on the delivery
id, but we do not rely on every receiver doing so. Other answers (3xx, 4xx) are the
receiver's decision and retrying would only repeat it.
"""

from __future__ import annotations

import http.client
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests
import urllib3.exceptions

from dispatcher.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)

MAX_ANSWER_BYTES = 64 * 1024  # read at most this much of a receiver's answer
SNIPPET_CHARS = 200  # how much of a rejecting receiver's answer goes into Attempt.detail
RETRY_STATUSES = frozenset({408, 429})
USER_AGENT = "vast-dispatcher-webhook"

_REDACT_MIN = 8  # shorter secrets are not redacted from texts: it would mangle ordinary words


@dataclass(frozen=True)
class Attempt:
    """How one POST went; ``outcome`` is all the caller needs to decide what happens next."""

    outcome: str  # "delivered" | "retry" | "failed"
    status: int | None  # the receiver's HTTP status; None when there was no answer
    detail: str  # short text for operators; never holds the secret


def deliver(session: requests.Session, url: str, body: bytes, *, secret: str,
            delivery_id: str, event: str, connect_timeout: float = 5.0,
            read_timeout: float = 10.0, now: Callable[[], float] = time.time) -> Attempt:
    """One signed POST, classified. Never raises for network trouble or a bad URL.

    The session must not retry by itself (requests' default adapter does not): a urllib3
    ``Retry`` with read retries would resend after a read timeout, the duplicate this
    module exists to avoid.
    """
    if not secret:
        return Attempt("failed", None, "no webhook secret: unsigned webhooks are never sent")
    ts = int(now())
    try:
        signature = sign(secret, delivery_id, ts, body)
    except TypeError as e:
        return Attempt("failed", None, str(e))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        # Compressed answers are not decoded (no decompression bombs); ask for none.
        "Accept-Encoding": "identity",
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: signature,
    }
    attempt = _post(session, url, bytes(body), headers, connect_timeout, read_timeout)
    return _redacted(attempt, secret)


def retry_delay(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Seconds before retry number ``attempt`` (0 first): full jitter spreads a burst of
    retries after a receiver outage, so they do not all return at once; never under
    ``base / 2`` so a retry is never immediate, never over ``cap``."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 60))
    return min(cap, max(base / 2, random.uniform(0, ceiling)))


def _post(session: requests.Session, url: str, body: bytes, headers: dict[str, str],
          connect_timeout: float, read_timeout: float) -> Attempt:
    try:
        r = session.post(url, data=body, headers=headers, timeout=(connect_timeout, read_timeout),
                         allow_redirects=False, stream=True)
    except requests.exceptions.ConnectTimeout:
        return Attempt("retry", None, f"connect timeout after {connect_timeout:g}s")
    except requests.exceptions.ReadTimeout:
        return Attempt("failed", None, f"read timeout after {read_timeout:g}s: not retried, "
                                       "the receiver may have processed it")
    except requests.exceptions.SSLError as e:
        return Attempt("failed", None, _reason(e, "TLS error"))
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, urllib3.exceptions.LocationValueError) as e:
        # urllib3's LocationParseError (e.g. "http://a..b/") escapes requests unwrapped.
        return Attempt("failed", None, f"invalid webhook URL: {_short(str(e))}")
    except requests.exceptions.ConnectionError as e:
        # Refused, DNS, reset, or the receiver closed the connection before any answer
        # (requests raises ConnectionError(ProtocolError(RemoteDisconnected)) for that).
        # Retried: the common cause is a stale keep-alive connection or a receiver that
        # is restarting, and no answer means no sign it acted. Unlike a read timeout, a
        # receiver that is slow but alive does not land here.
        return Attempt("retry", None, _reason(e, "connection error"))
    except requests.exceptions.RequestException as e:  # InvalidHeader, RetryError, ...
        return Attempt("failed", None, f"{type(e).__name__}: {_short(str(e))}")
    except ValueError as e:  # e.g. an event name that is not Latin-1 (UnicodeEncodeError)
        return Attempt("failed", None, f"request could not be built: {type(e).__name__}")
    with r:  # closes the connection, also when the answer was not read to its end
        status = r.status_code
        text = _read_bounded(r, MAX_ANSWER_BYTES, deadline=time.monotonic() + read_timeout)
        if 200 <= status < 300:
            return Attempt("delivered", status, f"HTTP {status}")
        if status >= 500 or status in RETRY_STATUSES:
            retry_after = r.headers.get("Retry-After")
            hint = f" (Retry-After: {_short(retry_after, 40)})" if retry_after else ""
            return Attempt("retry", status, f"HTTP {status} from receiver{hint}")
        detail = f"HTTP {status} from receiver, not retried"
        if 300 <= status < 400 and r.headers.get("Location"):
            detail += f" (redirects are not followed; Location: {_short(r.headers['Location'])})"
        snippet = _snippet(text, r.headers.get("Content-Encoding"))
        return Attempt("failed", status, f"{detail}: {snippet}" if snippet else detail)


def _read_bounded(r: requests.Response, limit: int, deadline: float) -> bytes:
    """At most ``limit`` bytes, stopping at ``deadline``: a huge, endless or dripping answer
    must not hold a worker. Each read returns what has arrived (read1), so a slow drip is
    cut at the deadline rather than waiting for ``limit`` bytes. Errors end the read: the
    status is what counts."""
    raw = r.raw
    read = getattr(raw, "read1", None) or raw.read  # read1: urllib3 >= 2.3
    chunks: list[bytes] = []
    got = 0
    try:
        while got < limit and time.monotonic() < deadline:
            chunk = read(min(16 * 1024, limit - got), decode_content=False)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except Exception:  # timeouts, resets, bad chunking: the status stands
        pass
    return b"".join(chunks)


def _snippet(text: bytes, content_encoding: str | None) -> str:
    if content_encoding and content_encoding.strip().lower() != "identity":
        return f"({content_encoding.strip()[:20]}-encoded answer not shown)" if text else ""
    decoded = text[: SNIPPET_CHARS * 4].decode("utf-8", "replace")
    return _short(decoded, SNIPPET_CHARS)


def _short(text: str, limit: int = SNIPPET_CHARS) -> str:
    """One line, at most ``limit`` chars: details end up in log lines and Redis fields."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _chain(e: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests and urllib3 nest 3-4 deep)."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        reason = getattr(cur, "reason", None)
        inner = [reason, cur.__cause__, cur.__context__, *cur.args]
        todo.extend(x for x in inner if isinstance(x, BaseException))


def _reason(e: BaseException, kind: str) -> str:
    """A short human reason for a connection-level error, without the URL (it may carry a
    token in its query) and without urllib3's nested reprs."""
    chain = list(_chain(e))
    for cls, text in (
        (ConnectionRefusedError, "connection refused"),
        (urllib3.exceptions.NameResolutionError, "DNS lookup failed"),
        (socket.gaierror, "DNS lookup failed"),
        (http.client.RemoteDisconnected, "receiver closed the connection without answering"),
        (ConnectionResetError, "connection reset before any answer"),
        (ConnectionAbortedError, "connection aborted before any answer"),
    ):
        if any(isinstance(x, cls) for x in chain):
            return text if kind == "connection error" else f"{kind}: {text}"
    for x in reversed(chain):  # innermost OS error first: "[Errno 113] No route to host"
        if isinstance(x, OSError) and x.strerror:
            return f"{kind}: {_short(x.strerror, 120)}"
    inner = chain[-1]
    return f"{kind}: {type(inner).__name__}: {_short(str(inner), 120)}"


def _redacted(attempt: Attempt, secret: str) -> Attempt:
    """Belt and braces: the secret never enters a request, but a receiver's error page
    could echo it back (it knows it); keep it out of details, logs and Redis."""
    if len(secret) < _REDACT_MIN or secret not in attempt.detail:
        return attempt
    return Attempt(attempt.outcome, attempt.status, attempt.detail.replace(secret, "[secret]"))
