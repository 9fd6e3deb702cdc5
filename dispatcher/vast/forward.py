"""``POST <worker url><path>``: forward a job to the GPU worker Vast assigned.

The body is ``{"auth_data": <the assignment, verbatim>, "payload": ..., "session_id":
null}``; no key goes to a worker (they are third-party machines). ``timeout`` bounds
the whole exchange, connect to last byte, however slowly the answer arrives: a
watchdog closes the connection at the deadline (``dispatcher/net.py``).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, NoReturn

from dispatcher.errors import (
    RouteBadAnswer,
    VastError,
    WorkerAborted,
    WorkerBadAnswer,
    WorkerError,
    WorkerRejected,
    WorkerSignatureRejected,
    WorkerStreamBroken,
    WorkerTimeout,
    WorkerTLSError,
    WorkerUnavailable,
)
from dispatcher.net import WATCHDOG, Exchange, Guard, NetError, Pool, Target, Watchdog, worker_tls
from dispatcher.vast.framing import Framer, framer_for
from dispatcher.vast.protocol import (
    DETAIL_LIMIT,
    TEXT_LIMIT,
    Assignment,
    WorkerResponse,
    decode_body,
    decode_text,
    is_http_url,
    redact,
)

log = logging.getLogger("dispatcher.vast")

READ_CHUNK = 64 * 1024
PieceSink = Callable[[list[str]], None]  # gets each batch of pieces as it arrives


class WorkerClient:
    def __init__(self, pool: Pool, *, ca_bundle: str | None = None,
                 insecure_worker_tls: bool = False, max_result_bytes: int = 10 * 1024 * 1024,
                 connect_timeout: float = 5.0, secret: str | None = None,
                 watchdog: Watchdog = WATCHDOG, tls: ssl.SSLContext | None = None) -> None:
        if ca_bundle and not os.path.exists(ca_bundle):
            # Fail at startup, not as an OSError on every call.
            raise ValueError(f"VAST_CA_BUNDLE: no such file or directory: {ca_bundle!r}")
        self.pool = pool
        self.max_result_bytes = max_result_bytes
        self.connect_timeout = connect_timeout
        self.watchdog = watchdog
        self._secret = secret  # never sent to a worker; redacted from what they say
        if ca_bundle and insecure_worker_tls:
            log.warning("VAST_INSECURE_WORKER_TLS is ignored: VAST_CA_BUNDLE is set, "
                        "worker certificates are verified against it")
            insecure_worker_tls = False
        elif insecure_worker_tls:
            log.warning(
                "VAST_INSECURE_WORKER_TLS is on: worker TLS certificates are NOT verified; "
                "payloads and signed assignments may go to an impostor. Set VAST_CA_BUNDLE "
                "to Vast's root certificate (jvastai_root.cer) instead."
            )
        self.ca_bundle = ca_bundle
        try:
            self.tls = tls or worker_tls(ca_bundle, insecure_worker_tls)
        except ssl.SSLError as e:
            raise ValueError(f"VAST_CA_BUNDLE: {ca_bundle!r} holds no certificate OpenSSL "
                             f"can load ({e.reason or e})") from None

    def _clean(self, text: str) -> str:
        return redact(text, self._secret)[:TEXT_LIMIT]

    def call_worker(self, assignment: Assignment, path: str, payload: Any,
                    timeout: float, guard: Guard | None = None,
                    on_pieces: PieceSink | None = None) -> WorkerResponse:
        """POST the job to its assigned worker. ``timeout`` bounds the whole exchange;
        ``guard`` (from ``watchdog.guard(timeout)``) lets another thread cut it short.
        ``on_pieces`` gets a successful answer's pieces as they arrive (framing.py)."""
        if not path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {path!r}")
        if not timeout > 0:
            raise ValueError(f"timeout: must be > 0, got {timeout!r}")
        if not is_http_url(assignment.url):
            url = self._clean(str(assignment.url))[:200]
            raise RouteBadAnswer(f"route: worker url {url!r} is not an http(s) address with "
                                 "a host; not forwarded")
        # Serialised here so that a payload error is a ValueError, not a "connection" error.
        try:
            data = json.dumps({"auth_data": assignment.auth_data, "payload": payload,
                               "session_id": None}, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"payload: not JSON-serialisable: {type(e).__name__}") from None
        where = self._clean(assignment.url)[:200]
        who = f"worker for endpoint {assignment.auth_data.get('endpoint')!r} at {where}"
        started = time.monotonic()
        guard = guard or self.watchdog.guard(timeout)
        try:
            target = Target.parse(assignment.url.rstrip("/") + path)
            resp = self._call(target, data.encode(), who, guard, timeout, started, on_pieces)
        except VastError as e:
            log.debug("%s%s: %s (status %s) after %.3fs", who, path, type(e).__name__,
                      e.status, time.monotonic() - started)
            raise
        log.debug("%s%s: HTTP %s after %.3fs", who, path, resp.status, resp.elapsed)
        return resp

    def _call(self, target: Target, data: bytes, who: str, guard: Guard, timeout: float,
              started: float, on_pieces: PieceSink | None) -> WorkerResponse:
        error: WorkerError | None = None
        try:
            # No Authorization header: the key never goes to a worker.
            ex = self.pool.exchange(
                "POST", target, body=data, headers={"Content-Type": "application/json"},
                guard=guard, connect_timeout=self.connect_timeout, read_timeout=timeout,
                tls=self.tls if target.scheme == "https" else None)
        except NetError as e:
            error = self._failed(who, e, timeout)
        if error is not None:
            raise error
        with ex:
            ok = 200 <= ex.status < 300
            ctype = ex.headers.get("Content-Type")
            framer = framer_for(ctype) if ok and on_pieces is not None else None
            raw = self._read_body(ex, who, timeout, ok, framer, on_pieces)
        elapsed = time.monotonic() - started
        if ok:
            try:
                body = decode_body(raw, ctype)
            except RecursionError:  # JSON nested too deeply to parse: keep it as text
                body = decode_text(raw, ctype)
            del raw
            return WorkerResponse(ex.status, body, elapsed)
        self._raise_for_status(who, ex.status, self._clean(decode_text(raw, ctype)))

    def _failed(self, who: str, e: NetError, timeout: float) -> WorkerError:
        """What a failure before the worker's status line means for the job."""
        detail = self._clean(str(e))[:300]
        if e.kind == "aborted":
            return WorkerAborted(f"{who}: GPU call interrupted ({detail})")
        if e.kind == "tls":
            hint = (f"VAST_CA_BUNDLE={self.ca_bundle!r} does not verify it" if self.ca_bundle
                    else "set VAST_CA_BUNDLE to Vast's root certificate (jvastai_root.cer)")
            return WorkerTLSError(f"{who}: TLS verification failed: {detail}; {hint}")
        if e.kind == "deadline" and e.sent:
            return _timeout(who, timeout)
        if e.kind in ("deadline", "connect_timeout"):
            return WorkerUnavailable(f"{who}: connect timed out: {detail}")
        return WorkerUnavailable(f"{who}: connection failed: {detail}")

    def _read_body(self, ex: Exchange, who: str, timeout: float, ok: bool,
                   framer: Framer | None = None, on_pieces: PieceSink | None = None
                   ) -> bytearray:
        """Read bytes as they arrive, within the exchange's deadline; with a framer, hand
        each batch of pieces to ``on_pieces`` at once (the answer is kept once, as bytes,
        for the job's result).

        An error answer is only quoted, so past ``TEXT_LIMIT`` bytes it is cut, not refused.
        """
        limit = self.max_result_bytes if ok else 2 * TEXT_LIMIT
        length = ex.headers.get("Content-Length", "")
        if ok and length.isdigit() and int(length) > limit:
            raise _too_large(who, ex.status, limit)
        body = bytearray()
        error: WorkerError | None = None
        try:
            while True:
                chunk = ex.read1(READ_CHUNK)
                if not chunk:
                    if framer is not None and on_pieces is not None:
                        tail = framer.close()
                        if tail:
                            on_pieces(tail)
                    break
                if len(body) + len(chunk) > limit:
                    if ok:
                        error = _too_large(who, ex.status, limit)
                    else:
                        body += chunk[: limit - len(body)]
                    break
                body += chunk
                if framer is not None and on_pieces is not None:
                    pieces = framer.feed(chunk)
                    if pieces:
                        on_pieces(pieces)
        except NetError as e:
            if e.kind == "aborted":
                error = WorkerAborted(f"{who}: GPU call interrupted mid-answer "
                                      f"({self._clean(str(e))[:200]})", ex.status)
            elif e.kind == "deadline":
                error = _timeout(who, timeout)
            elif ok and framer is not None:  # pieces were read: they stay readable
                error = WorkerStreamBroken(
                    f"{who}: the stream broke after HTTP {ex.status} and {len(body)} bytes; "
                    "the pieces received are kept; the GPU did work, so the job is not "
                    "run again", ex.status)
            elif ok:  # the worker answered success, so it ran the job; the answer is lost
                error = WorkerTimeout(
                    f"{who}: connection broke mid-answer after HTTP {ex.status}; the GPU "
                    "did the work, so running the job again may run it twice", ex.status)
            # else: keep the partial error text; the status decides
        if error is not None:
            raise error
        return body

    @staticmethod
    def _raise_for_status(who: str, status: int, text: str) -> NoReturn:
        meaning = _WORKER_STATUS.get(status) or ("worker error" if status >= 500 else
                                                 "rejected")
        msg = f"{who}: {status} {meaning}: {text[:DETAIL_LIMIT] or '(empty body)'}"
        if status == 401:
            raise WorkerSignatureRejected(msg, status, text)
        if status in (408, 429) or status >= 500:
            raise WorkerUnavailable(msg, status, text)
        raise WorkerRejected(msg, status, text)


_WORKER_STATUS = {
    401: "assignment signature rejected",
    408: "request timeout",
    410: "unknown session",
    422: "malformed request",
    429: "busy (its queue is over max_queue_time)",
    499: "client disconnected",
}


def _timeout(who: str, timeout: float) -> WorkerTimeout:
    return WorkerTimeout(
        f"{who}: no full answer within timeout={timeout:g}s; the GPU may have done the "
        "work, so retrying may run the job twice"
    )


def _too_large(who: str, status: int, limit: int) -> WorkerBadAnswer:
    return WorkerBadAnswer(
        f"{who}: answer larger than the limit of {limit} bytes "
        "(DISPATCHER_MAX_RESULT_BYTES)", status)
