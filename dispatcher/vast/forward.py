"""``POST <worker url><path>``: forward a job to the GPU worker Vast assigned.

The body is ``{"auth_data": <the assignment, verbatim>, "payload": ..., "session_id":
null}``; no key goes to a worker (they are third-party machines). ``timeout`` bounds
the whole answer, however slowly it arrives.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, NoReturn

import requests
import urllib3

from dispatcher.errors import (
    RouteBadAnswer,
    VastError,
    WorkerBadAnswer,
    WorkerError,
    WorkerRejected,
    WorkerSignatureRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from dispatcher.vast.http import reason
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


class WorkerClient:
    def __init__(self, session: requests.Session, *, ca_bundle: str | None = None,
                 insecure_worker_tls: bool = False, max_result_bytes: int = 10 * 1024 * 1024,
                 connect_timeout: float = 5.0, secret: str | None = None) -> None:
        if ca_bundle and not os.path.exists(ca_bundle):
            # requests would raise a bare OSError on every call; fail at startup instead.
            raise ValueError(f"VAST_CA_BUNDLE: no such file or directory: {ca_bundle!r}")
        self.session = session
        self.max_result_bytes = max_result_bytes
        self.connect_timeout = connect_timeout
        self._secret = secret  # never sent to a worker; redacted from what they say
        self._verify: bool | str = True
        if ca_bundle:
            self._verify = ca_bundle
            if insecure_worker_tls:
                log.warning("VAST_INSECURE_WORKER_TLS is ignored: VAST_CA_BUNDLE is set, "
                            "worker certificates are verified against it")
        elif insecure_worker_tls:
            self._verify = False
            log.warning(
                "VAST_INSECURE_WORKER_TLS is on: worker TLS certificates are NOT verified; "
                "payloads and signed assignments may go to an impostor. Set VAST_CA_BUNDLE "
                "to Vast's root certificate (jvastai_root.cer) instead."
            )
            # One warning above instead of one per request (process-wide in urllib3).
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def _clean(self, text: str) -> str:
        return redact(text, self._secret)[:TEXT_LIMIT]

    def call_worker(self, assignment: Assignment, path: str, payload: Any,
                    timeout: float) -> WorkerResponse:
        """POST the job to its assigned worker; ``timeout`` bounds the whole answer."""
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
        except (TypeError, ValueError) as e:
            raise ValueError(f"payload: not JSON-serialisable: {e}") from None
        where = self._clean(assignment.url)[:200]
        who = f"worker for endpoint {assignment.auth_data.get('endpoint')!r} at {where}"
        started = time.monotonic()
        try:
            resp = self._call(assignment.url.rstrip("/") + path, data.encode(), who,
                              started + timeout, timeout)
        except VastError as e:
            log.debug("%s%s: %s (status %s) after %.3fs", who, path, type(e).__name__,
                      e.status, time.monotonic() - started)
            raise
        log.debug("%s%s: HTTP %s after %.3fs", who, path, resp.status, resp.elapsed)
        return resp

    def _call(self, url: str, data: bytes, who: str, deadline: float,
              timeout: float) -> WorkerResponse:
        started = deadline - timeout
        error: WorkerError | None = None
        try:
            # No Authorization header: the key never goes to a worker.
            r = self.session.post(
                url, data=data, headers={"Content-Type": "application/json"},
                timeout=(self.connect_timeout, timeout), verify=self._verify, stream=True,
                allow_redirects=False)
        except requests.ConnectTimeout as e:
            error = WorkerUnavailable(f"{who}: connect timed out: {reason(e, self._secret)}")
        except requests.ReadTimeout:
            error = _timeout(who, timeout)
        except requests.RequestException as e:
            error = WorkerUnavailable(f"{who}: connection failed: {reason(e, self._secret)}")
        if error is not None:
            raise error
        ok = 200 <= r.status_code < 300
        try:
            raw = self._read_body(r, who, deadline, timeout, ok)
        finally:
            r.close()
        elapsed = time.monotonic() - started
        if ok:
            return WorkerResponse(r.status_code, decode_body(raw, r.headers.get("Content-Type")),
                                  elapsed)
        text = self._clean(decode_text(raw, r.headers.get("Content-Type")))
        self._raise_for_status(who, r.status_code, text)

    def _read_body(self, r: requests.Response, who: str, deadline: float, timeout: float,
                   ok: bool) -> bytes:
        """Read bytes as they arrive, each wait bounded by what is left of the deadline.

        An error answer is only quoted, so past ``TEXT_LIMIT`` bytes it is cut, not refused.
        """
        limit = self.max_result_bytes if ok else 2 * TEXT_LIMIT
        length = r.headers.get("Content-Length", "")
        if ok and length.isdigit() and int(length) > limit:
            raise _too_large(who, r.status_code, limit)
        chunks: list[bytes] = []
        size = 0
        error: WorkerError | None = None
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    error = _timeout(who, timeout)
                    break
                sock = getattr(r.raw.connection, "sock", None)  # None once fully read
                if sock is not None:
                    sock.settimeout(left)
                chunk = r.raw.read1(READ_CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    if ok:
                        error = _too_large(who, r.status_code, limit)
                    else:
                        chunks.append(chunk[: limit - size + len(chunk)])
                    break
                chunks.append(chunk)
        except urllib3.exceptions.ReadTimeoutError:
            error = _timeout(who, timeout)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if ok:  # the worker answered success, so it ran the job; the answer is lost
                error = WorkerTimeout(
                    f"{who}: connection broke mid-answer after HTTP {r.status_code} "
                    f"({type(e).__name__}); the GPU did the work, so running the job again "
                    "may run it twice", r.status_code)
            # else: keep the partial error text; the status decides
        if error is not None:
            raise error
        return b"".join(chunks)

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
