"""Client for Vast Serverless: ``POST /route/`` to claim a GPU worker, then call it.

Every failure is a typed error that says whether trying again can help. Errors
carry the HTTP status and the server's text, never the API key: requests
exceptions can hold the request and its Authorization header, so none is ever
chained to ours (they are raised outside the ``except`` blocks).

One client is shared by all worker threads of a process; nothing in it changes
per call (no cookies are kept, the TLS choice is fixed at construction).
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dispatcher.settings import Settings

log = logging.getLogger("dispatcher.vast")

REPLAY_TIMEOUT = 60.0
TEXT_LIMIT = 2000  # characters of server text kept on an error
DETAIL_LIMIT = 500  # characters of it quoted in the message
READ_CHUNK = 64 * 1024


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked (redact before truncating)."""
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text


class VastError(Exception):
    """Base error. ``retryable``: whether the same call may succeed later."""

    retryable = False

    def __init__(self, message: str, status: int | None = None, text: str = "",
                 *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.text = text
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Celery pickles errors: keep status, text and retryable across processes.
        return (_rebuild, (type(self), str(self), self.status, self.text, self.retryable))


def _rebuild(cls: type[VastError], message: str, status: int | None, text: str,
             retryable: bool) -> VastError:
    return cls(message, status, text, retryable=retryable)


class RouteError(VastError):
    """The route call failed; no worker was assigned."""


class RouteAuthError(RouteError):
    """401 or no key: a configuration error. Permanent."""


class RouteRejected(RouteError):
    """400: unknown endpoint or bad parameters. Permanent for this job."""


class RouteRateLimited(RouteError):
    """429: too many route calls for this endpoint and key. Back off, retry."""

    retryable = True


class RouteUnavailable(RouteError):
    """5xx, another unexpected status, a connection error, a timeout or a garbled 200. Retry."""

    retryable = True


class RouteBadAnswer(RouteError):
    """An assignment we must not forward (its url is not an http(s) address with a host)."""


class WorkerError(VastError):
    """The worker call failed."""


class WorkerRejected(WorkerError):
    """The worker refused the job for good (410, 422, 499, other 4xx)."""


class WorkerUnavailable(WorkerError):
    """The worker failed or went away without running the job (408, 429, 5xx, refused).

    Re-route with a fresh assignment, a bounded number of times.
    """

    retryable = True


class WorkerSignatureRejected(WorkerUnavailable):
    """401: assignment refused (or the worker has not loaded Vast's key yet). Re-route once."""


class WorkerTimeout(WorkerError):
    """No full answer in time after the request was sent: the GPU may have done the work.

    Not retryable by default: running it again may run a non-idempotent job twice.
    """


class WorkerBadAnswer(WorkerError):
    """The answer cannot be stored (larger than the limit). Permanent."""


def _int_or_none(value: Any) -> int | None:
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
        return self.auth_data["url"]

    @property
    def reqnum(self) -> Any:
        """For logs only; absent in some answers."""
        return self.auth_data.get("reqnum")

    @property
    def request_idx(self) -> int | None:
        """Vast's queue index, if the answer has one (the published schema does not)."""
        return _int_or_none(self.auth_data.get("request_idx"))


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


def _is_http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a malformed IPv6 host or port
        return False


class VastClient:
    """One keep-alive HTTP session shared by all worker threads of a process."""

    def __init__(
        self,
        *,
        route_url: str,
        api_key: str | None,
        route_timeout: float = 10.0,
        ca_bundle: str | None = None,
        insecure_worker_tls: bool = False,
        pool_size: int = 64,
        max_result_bytes: int = 10 * 1024 * 1024,
        connect_timeout: float = 5.0,
    ) -> None:
        if not _is_http_url(route_url):
            raise ValueError(f"VAST_ROUTE_URL: expected an http(s) URL, got {route_url!r}")
        if ca_bundle and not os.path.exists(ca_bundle):
            # requests would raise a bare OSError on every call; fail at startup instead.
            raise ValueError(f"VAST_CA_BUNDLE: no such file or directory: {ca_bundle!r}")
        self.route_url = route_url
        self._key = api_key
        self.route_timeout = route_timeout
        self.max_result_bytes = max_result_bytes
        self.connect_timeout = connect_timeout
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
        self.session = requests.Session()
        # Otherwise requests re-reads proxy variables and ~/.netrc on every call
        # (a third of our HTTP CPU); our TLS and timeouts are explicit anyway.
        self.session.trust_env = False
        # Cookies would be shared state mutated by every answer: keep none.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.session.headers["User-Agent"] = "vast-dispatcher"
        # Retries are ours to decide (route and worker semantics differ): none here.
        adapter = HTTPAdapter(pool_connections=max(pool_size, 1), pool_maxsize=pool_size,
                              pool_block=False, max_retries=Retry(total=0, read=False))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_settings(cls, settings: Settings) -> VastClient:
        return cls(
            route_url=settings.route_url,
            api_key=settings.vast_api_key,
            route_timeout=settings.route_timeout,
            ca_bundle=settings.ca_bundle,
            insecure_worker_tls=settings.insecure_worker_tls,
            pool_size=settings.concurrency,
            max_result_bytes=settings.max_result_bytes,
        )

    def __repr__(self) -> str:
        return f"VastClient(route_url={self.route_url!r}, key={'set' if self._key else 'unset'})"

    def _clean(self, text: str) -> str:
        return redact(text, self._key)[:TEXT_LIMIT]

    def _reason(self, e: BaseException) -> str:
        """A short, key-free account of a requests exception."""
        if isinstance(e, requests.exceptions.SSLError):
            return ("TLS failed (for Vast workers set VAST_CA_BUNDLE to Vast's root "
                    f"certificate): {self._clean(str(e))[:300]}")
        return f"{type(e).__name__}: {self._clean(str(e))[:300]}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- routing -------------------------------------------------------------------

    def route(self, endpoint: str, cost: float,
              request_idx: int | None = None) -> Assignment | NoWorker:
        """Ask Vast for a worker. A 200 containing ``url`` is an assignment, else "not yet"."""
        started = time.monotonic()
        try:
            answer = self._route(endpoint, cost, request_idx)
        except VastError as e:
            log.debug("route %r: %s (status %s) after %.3fs", endpoint, type(e).__name__,
                      e.status, time.monotonic() - started)
            raise
        if isinstance(answer, Assignment):
            log.debug("route %r: worker %s reqnum %s after %.3fs", endpoint, answer.url,
                      answer.reqnum, time.monotonic() - started)
        else:
            log.debug("route %r: no worker (%.200s) after %.3fs", endpoint, answer.status,
                      time.monotonic() - started)
        return answer

    def _route(self, endpoint: str, cost: float,
               request_idx: int | None) -> Assignment | NoWorker:
        if not self._key:
            raise RouteAuthError(
                "route: no API key: set VAST_API_KEY to the endpoint's (or account's) key")
        body: dict[str, Any] = {"endpoint": endpoint, "cost": cost}
        if request_idx is not None:
            body["request_idx"] = request_idx
        body["replay_timeout"] = REPLAY_TIMEOUT
        where = f"for endpoint {endpoint!r}"
        error: RouteError | None = None
        try:
            r = self.session.post(
                self.route_url, json=body, headers={"Authorization": f"Bearer {self._key}"},
                timeout=(self.connect_timeout, self.route_timeout), allow_redirects=False)
        except requests.Timeout as e:
            error = RouteUnavailable(f"route: timed out {where} (connect "
                                     f"{self.connect_timeout:g}s, answer {self.route_timeout:g}s):"
                                     f" {self._reason(e)}")
        except requests.RequestException as e:
            error = RouteUnavailable(f"route: connection failed {where}: {self._reason(e)}")
        if error is not None:
            raise error
        return self._route_answer(where, r)

    def _route_answer(self, where: str, r: requests.Response) -> Assignment | NoWorker:
        text = self._clean(r.text)
        status = r.status_code
        if status == 200:
            try:
                data = r.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise RouteUnavailable(
                    f"route: 200 with a body that is not a JSON object {where}: "
                    f"{text[:200] or '(empty body)'}", status, text)
            if "url" in data:
                return self._assignment(where, data, text)
            # Any shape: status, request_idx and endpoint may each be absent or odd.
            raw_status = data.get("status")
            ep = data.get("endpoint")
            return NoWorker(
                status="" if raw_status is None else str(raw_status)[:TEXT_LIMIT],
                request_idx=_int_or_none(data.get("request_idx")),
                endpoint=ep if isinstance(ep, str) else None,
            )
        detail = _error_text(text)
        if status == 401:
            raise RouteAuthError(f"route: 401 authentication failed {where}: {detail}",
                                 status, text)
        if status == 400:
            raise RouteRejected(f"route: 400 rejected {where}: {detail}", status, text)
        if status == 429:
            raise RouteRateLimited(f"route: 429 rate limited {where}: {detail}", status, text)
        if 300 <= status < 400:
            to = self._clean(r.headers.get("Location", "?"))[:200]
            detail = f"redirect to {to} (set VAST_ROUTE_URL to the final address)"
        raise RouteUnavailable(f"route: unexpected HTTP {status} {where}: {detail}",
                               status, text)

    def _assignment(self, where: str, data: dict[str, Any], text: str) -> Assignment:
        # The one check that protects us: where the payload would go.
        if not _is_http_url(data["url"]):
            url = self._clean(str(data["url"]))[:200]
            raise RouteBadAnswer(f"route: worker url {url!r} {where} is not an http(s) address "
                                 "with a host; not forwarded", 200, text)
        return Assignment(auth_data=data)

    # --- calling the worker --------------------------------------------------------

    def call_worker(self, assignment: Assignment, path: str, payload: Any,
                    timeout: float) -> WorkerResponse:
        """POST the job to its assigned worker; ``timeout`` bounds the whole answer."""
        if not path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {path!r}")
        if not timeout > 0:
            raise ValueError(f"timeout: must be > 0, got {timeout!r}")
        if not _is_http_url(assignment.url):
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
            error = WorkerUnavailable(f"{who}: connect timed out: {self._reason(e)}")
        except requests.ReadTimeout:
            error = _timeout(who, timeout)
        except requests.RequestException as e:
            error = WorkerUnavailable(f"{who}: connection failed: {self._reason(e)}")
        if error is not None:
            raise error
        ok = 200 <= r.status_code < 300
        try:
            raw = self._read_body(r, who, deadline, timeout, ok)
        finally:
            r.close()
        elapsed = time.monotonic() - started
        if ok:
            return WorkerResponse(r.status_code, _decode(raw, r.headers.get("Content-Type")),
                                  elapsed)
        text = self._clean(_decode_text(raw, r.headers.get("Content-Type")))
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


def _error_text(text: str) -> str:
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


def _decode_text(raw: bytes, content_type: str | None) -> str:
    try:
        return raw.decode(_charset(content_type), "replace")
    except LookupError:  # an unknown charset name
        return raw.decode("utf-8", "replace")


def _decode(raw: bytes, content_type: str | None) -> Any:
    """JSON if the worker says so (or says nothing and it parses), else text."""
    text = _decode_text(raw, content_type)
    ctype = (content_type or "").split(";")[0].strip().lower()
    if "json" in ctype or (not ctype and text.lstrip()[:1] in ("{", "[")):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
