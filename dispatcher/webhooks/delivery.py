"""One webhook POST: check where it goes, sign it, make the attempt, say whether to retry.

Where: the host is resolved once and every address checked (``dispatcher/ssrf.py``);
the request goes to the checked address, with the URL's host as Host header and TLS
name. A refused address fails the delivery (no retry: the policy will not change).

How long: one wall-clock deadline per attempt (``timeout``: lookup, connect and the
answer's status line and headers together), enforced by net.py's watchdog, so a
receiver that drips a header line a second cannot hold a thread past it.

What is kept: the receiver's HTTP status, never its body or headers (a webhook must not
read internal services out to the submitter), and short, uniform reasons for connection
failures (refused, timed out and unreachable all read the same: no port scanner).

What is retried follows one rule: retry only when the receiver cannot have acted on the
request, or said it did not (5xx, 408, 429). Connection failures before the request was
sent are retried, and so is a connection closed without any answer (a stale keep-alive
connection, a receiver restarting). The deadline passing after the request was sent is
never retried: the receiver may have processed it. Other answers (3xx, 4xx) are the
receiver's decision and retrying would only repeat it.

No environment is read: net.py's connections know no proxies and no ``.netrc``.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.net import WATCHDOG, Exchange, NetError, Pool, Target, Watchdog
from dispatcher.ssrf import (
    AllowList,
    IPAddress,
    LookupFailed,
    host_name_error,
    refusal_text,
    resolve,
)
from dispatcher.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)

MAX_ANSWER_BYTES = 64 * 1024  # read (and drop) at most this much of an answer
RETRY_STATUSES = frozenset({408, 429})
USER_AGENT = "vast-dispatcher-webhook"
CONNECT_TIMEOUT = 5.0  # at most, per address, within the attempt's deadline

# Connection-level reasons, the same whatever the cause underneath.
NO_CONNECTION = "could not connect to the receiver"
NO_ANSWER = "the receiver closed the connection without answering"

_REDACT_MIN = 8  # shorter secrets are not redacted from texts: it would mangle ordinary words

# Keep-alive connections to receivers, per (origin, checked address): shared by threads.
POOL = Pool(per_origin=4, user_agent=USER_AGENT)


@dataclass(frozen=True)
class Attempt:
    """How one POST went; ``outcome`` is all the caller needs to decide what happens next."""

    outcome: str  # "delivered" | "retry" | "failed"
    status: int | None  # the receiver's HTTP status; None when there was no answer
    detail: str  # short text for operators and the submitter; never a receiver's body


def deliver(url: str, body: bytes, *, secret: str, delivery_id: str, event: str,
            timeout: float = 10.0, allow: AllowList | str = "",
            connect_timeout: float = CONNECT_TIMEOUT, pool: Pool | None = None,
            tls: ssl.SSLContext | None = None, watchdog: Watchdog = WATCHDOG,
            now: Callable[[], float] = time.time) -> Attempt:
    """One signed POST, classified. Never raises for network trouble or a bad URL.

    ``allow``: the allow-list (``DISPATCHER_WEBHOOK_ALLOW``'s text, or parsed).
    ``tls``: the context for https receivers (public CAs by default).
    """
    if not secret:
        return Attempt("failed", None, "no webhook secret: unsigned webhooks are never sent")
    deadline = time.monotonic() + timeout
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
    if not all(_header_value(v) for v in headers.values()):
        return Attempt("failed", None, "request could not be built: the event or delivery "
                                       "id is not a plain header value")
    try:
        target = Target.parse(url)
    except ValueError:
        return Attempt("failed", None, "invalid webhook URL: not an http(s) URL with a host")
    bad_host = host_name_error(target.host)
    if bad_host:
        return Attempt("failed", None, f"invalid webhook URL: {bad_host}")
    allowed = allow if isinstance(allow, AllowList) else AllowList.parse(allow)
    try:
        addresses = resolve(target.host, target.port, deadline - time.monotonic())
    except LookupFailed as e:
        return Attempt("retry", None, str(e))
    if not allowed.allows_host(target.host):
        for ip in addresses:
            kind = allowed.refusal(ip)
            if kind is not None:
                return Attempt("failed", None, refusal_text(kind))
    attempt = _post(pool or POOL, url, addresses, bytes(body), headers, deadline,
                    min(connect_timeout, timeout), timeout, tls, watchdog)
    return _redacted(attempt, secret)


def retry_delay(attempt: int, base: float = 1.0, cap: float = 300.0) -> float:
    """Seconds before retry number ``attempt`` (0 first): full jitter spreads a burst of
    retries after a receiver outage, so they do not all return at once; never under
    ``base / 2`` so a retry is never immediate, never over ``cap``."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 60))
    return min(cap, max(base / 2, random.uniform(0, ceiling)))


def _header_value(v: str) -> bool:
    return v.isascii() and v.isprintable()


def _post(pool: Pool, url: str, addresses: list[IPAddress], body: bytes,
          headers: dict[str, str], deadline: float, connect_timeout: float, timeout: float,
          tls: ssl.SSLContext | None, watchdog: Watchdog) -> Attempt:
    """POST to the checked addresses in turn (the next only if one could not be reached)."""
    for ip in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        target = Target.parse(url, connect_host=str(ip))
        try:
            with pool.exchange("POST", target, body=body, headers=headers,
                               guard=watchdog.guard(left), connect_timeout=connect_timeout,
                               read_timeout=left, tls=tls) as ex:
                status = ex.status
                retry_after = ex.headers.get("Retry-After", "")
                _drain(ex)
        except NetError as e:
            if not e.sent and e.kind in ("connect", "connect_timeout"):
                continue  # nothing reached this address: the next one may answer
            return _failure(e, timeout)
        return _classify(status, retry_after)
    return Attempt("retry", None, NO_CONNECTION)


def _drain(ex: Exchange) -> None:
    """Read (and drop) a small answer so the connection can carry the next attempt;
    a big, endless or dripping one is cut (the deadline bounds it). The status stands."""
    got = 0
    try:
        while got <= MAX_ANSWER_BYTES:
            piece = ex.read1(16 * 1024)
            if not piece:
                return
            got += len(piece)
    except NetError:
        return


def _failure(e: NetError, timeout: float) -> Attempt:
    if e.kind == "tls":
        return Attempt("failed", None, f"TLS error: {_short(str(e), 160)}")
    if e.kind == "deadline" and e.sent:
        return Attempt("failed", e.status,
                       f"timeout: no answer within {timeout:g}s (DISPATCHER_WEBHOOK_TIMEOUT); "
                       "not retried, the receiver may have processed it")
    if e.sent:
        return Attempt("retry", None, NO_ANSWER)
    return Attempt("retry", None, NO_CONNECTION)


def _classify(status: int, retry_after: str) -> Attempt:
    if 200 <= status < 300:
        return Attempt("delivered", status, f"HTTP {status}")
    if status >= 500 or status in RETRY_STATUSES:
        hint = (f" (Retry-After: {retry_after.strip()})"
                if retry_after.strip().isdigit() and len(retry_after.strip()) <= 8 else "")
        return Attempt("retry", status, f"HTTP {status} from receiver{hint}")
    if 300 <= status < 400:
        return Attempt("failed", status,
                       f"HTTP {status} from receiver, not retried (redirects are not followed)")
    return Attempt("failed", status, f"HTTP {status} from receiver, not retried")


def _short(text: str, limit: int) -> str:
    """One line, at most ``limit`` chars: details end up in log lines and Redis fields."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _redacted(attempt: Attempt, secret: str) -> Attempt:
    """Belt and braces: no receiver text is kept, but keep the secret out of any detail."""
    if len(secret) < _REDACT_MIN or secret not in attempt.detail:
        return attempt
    return Attempt(attempt.outcome, attempt.status, attempt.detail.replace(secret, "[secret]"))
