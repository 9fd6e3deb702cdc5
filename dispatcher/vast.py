"""Client for Vast Serverless: ``POST /route/`` to claim a GPU worker, then call it.

Every failure is a typed error that says whether trying again can help. Errors
carry the HTTP status and the server's text, never the API key.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from dispatcher.settings import Settings

log = logging.getLogger("dispatcher.vast")

ASSIGNMENT_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")
REPLAY_TIMEOUT = 60.0
TEXT_LIMIT = 2000


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked."""
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text


class VastError(Exception):
    retryable = False

    def __init__(self, message: str, status: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.text = text


class RouteError(VastError):
    pass


class RouteAuthError(RouteError):
    """401: the key is wrong or missing. Permanent: a configuration error."""


class RouteRejected(RouteError):
    """400: unknown endpoint or bad parameters. Permanent for this job."""


class RouteRateLimited(RouteError):
    """429: too many route calls for this endpoint and key. Back off, retry."""

    retryable = True


class RouteUnavailable(RouteError):
    """5xx, a connection error, a timeout or a garbled answer. Retry."""

    retryable = True


class RouteBadAnswer(RouteError):
    """A worker assignment we must not forward (bad url, missing fields)."""


class WorkerError(VastError):
    pass


class WorkerRejected(WorkerError):
    """The worker refused the job for good (410, 422, other 4xx)."""


class WorkerUnavailable(WorkerError):
    """The worker failed or went away before answering (408, 429, 5xx, refused). Re-route."""

    retryable = True


class WorkerSignatureRejected(WorkerUnavailable):
    """401: the worker rejected the assignment (or has not loaded Vast's key yet)."""


class WorkerTimeout(WorkerError):
    """No full answer in time after the request was sent: the GPU may have done the work."""


class WorkerBadAnswer(WorkerError):
    """The answer cannot be stored (too large)."""


@dataclass(frozen=True)
class Assignment:
    """A route answer naming a worker, kept verbatim: it is forwarded as ``auth_data``."""

    auth_data: dict[str, Any]

    @property
    def url(self) -> str:
        return self.auth_data["url"]

    @property
    def reqnum(self) -> Any:
        return self.auth_data["reqnum"]

    @property
    def request_idx(self) -> Any:
        return self.auth_data["request_idx"]

    @property
    def endpoint(self) -> str:
        return self.auth_data["endpoint"]

    @property
    def cost(self) -> Any:
        return self.auth_data["cost"]


@dataclass(frozen=True)
class NoWorker:
    """Vast has no worker for the job yet; ``status`` is opaque text for humans."""

    status: str
    request_idx: int | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class WorkerResponse:
    status: int
    body: Any
    elapsed: float


def _is_http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


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
        self.route_url = route_url
        self._key = api_key
        self.route_timeout = route_timeout
        self.max_result_bytes = max_result_bytes
        self.connect_timeout = connect_timeout
        self._verify: bool | str = ca_bundle or True
        if insecure_worker_tls:
            self._verify = False
            log.warning(
                "VAST_INSECURE_WORKER_TLS is on: worker TLS certificates are NOT verified. "
                "Use VAST_CA_BUNDLE with Vast's root certificate instead."
            )
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.session = requests.Session()
        # Retries are ours to decide (route vs worker semantics differ): none here.
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_settings(cls, s: Settings) -> VastClient:
        return cls(
            route_url=s.route_url,
            api_key=s.vast_api_key,
            route_timeout=s.route_timeout,
            ca_bundle=s.ca_bundle,
            insecure_worker_tls=s.insecure_worker_tls,
            pool_size=s.concurrency,
            max_result_bytes=s.max_result_bytes,
        )

    def _clean(self, text: str) -> str:
        return redact(text, self._key)[:TEXT_LIMIT]

    # --- routing -------------------------------------------------------------------

    def route(self, endpoint: str, cost: float, request_idx: int | None = None
              ) -> Assignment | NoWorker:
        if not self._key:
            raise RouteAuthError(
                "route: no API key: set VAST_API_KEY to the endpoint's (or account's) key"
            )
        body: dict[str, Any] = {"endpoint": endpoint, "cost": cost,
                                "replay_timeout": REPLAY_TIMEOUT}
        if request_idx is not None:
            body["request_idx"] = request_idx
        headers = {"Authorization": f"Bearer {self._key}"}
        # Errors are raised outside the except blocks: a requests exception may
        # hold the request (and its Authorization header), so none is chained.
        error: RouteError | None = None
        try:
            r = self.session.post(self.route_url, json=body, headers=headers,
                                  timeout=(self.connect_timeout, self.route_timeout))
        except requests.Timeout:
            error = RouteUnavailable(
                f"route: no answer within {self.route_timeout:g}s for endpoint {endpoint!r}")
        except requests.RequestException as e:
            error = RouteUnavailable(
                f"route: connection failed for endpoint {endpoint!r}: {type(e).__name__}")
        if error is not None:
            raise error
        return self._route_answer(endpoint, r)

    def _route_answer(self, endpoint: str, r: requests.Response) -> Assignment | NoWorker:
        text = self._clean(r.text)
        where = f"for endpoint {endpoint!r}"
        if r.status_code == 200:
            try:
                data = r.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise RouteUnavailable(f"route: 200 with a body that is not a JSON object "
                                       f"{where}: {text[:200]}", 200, text)
            if "url" in data:
                return self._assignment(endpoint, data, text)
            idx = data.get("request_idx")
            status = data.get("status", "")
            return NoWorker(
                status=status if isinstance(status, str) else json.dumps(status),
                request_idx=idx if isinstance(idx, int) and not isinstance(idx, bool) else None,
                endpoint=data.get("endpoint"),
            )
        detail = _error_text(text)
        status = r.status_code
        if status == 401:
            raise RouteAuthError(f"route: 401 authentication failed {where}: {detail}",
                                 status, text)
        if status == 400:
            raise RouteRejected(f"route: 400 rejected {where}: {detail}", status, text)
        if status == 429:
            raise RouteRateLimited(f"route: 429 rate limited {where}: {detail}", status, text)
        raise RouteUnavailable(f"route: HTTP {status} {where}: {detail}", status, text)

    def _assignment(self, endpoint: str, data: dict[str, Any], text: str) -> Assignment:
        missing = [f for f in ASSIGNMENT_FIELDS if f not in data]
        if missing:
            raise RouteBadAnswer(
                f"route: assignment for endpoint {endpoint!r} lacks {', '.join(missing)}",
                200, text)
        if not _is_http_url(data["url"]):
            raise RouteBadAnswer(
                f"route: worker url {str(data['url'])[:200]!r} for endpoint {endpoint!r} "
                "is not an http(s) address", 200, text)
        return Assignment(auth_data=data)

    # --- calling the worker --------------------------------------------------------

    def call_worker(self, assignment: Assignment, path: str, payload: Any,
                    timeout: float) -> WorkerResponse:
        """POST the job to the assigned worker, bounded by ``timeout`` for the whole answer."""
        if not path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {path!r}")
        if not _is_http_url(assignment.url):
            raise RouteBadAnswer(f"route: worker url {assignment.url!r} is not http(s)")
        url = assignment.url.rstrip("/") + path
        body = {"auth_data": assignment.auth_data, "payload": payload, "session_id": None}
        started = time.monotonic()
        deadline = started + timeout
        error: WorkerError | None = None
        try:
            r = self.session.post(url, json=body, timeout=(self.connect_timeout, timeout),
                                  verify=self._verify, stream=True)
        except requests.ConnectTimeout:
            error = WorkerUnavailable(f"worker {assignment.url}: connect timed out")
        except requests.ReadTimeout:
            error = self._timeout(assignment, timeout)
        except requests.RequestException as e:
            error = WorkerUnavailable(
                f"worker {assignment.url}: connection failed ({type(e).__name__})")
        if error is not None:
            raise error
        try:
            raw = self._read_body(r, deadline, assignment, timeout)
        finally:
            r.close()
        elapsed = time.monotonic() - started
        text_of = lambda: self._clean(raw.decode("utf-8", "replace"))  # noqa: E731
        if 200 <= r.status_code < 300:
            return WorkerResponse(r.status_code, _decode(raw, r), elapsed)
        self._raise_worker_status(assignment, r.status_code, text_of())

    def _read_body(self, r: requests.Response, deadline: float, a: Assignment,
                   timeout: float) -> bytes:
        """Read as bytes arrive (read1), so the deadline holds for a slow drip too."""
        chunks: list[bytes] = []
        size = 0
        error: WorkerError | None = None
        try:
            while chunk := r.raw.read1(64 * 1024, decode_content=True):
                size += len(chunk)
                if size > self.max_result_bytes:
                    error = WorkerBadAnswer(
                        f"worker {a.url}: answer over the limit of {self.max_result_bytes} "
                        "bytes (DISPATCHER_MAX_RESULT_BYTES)", r.status_code)
                    break
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    error = self._timeout(a, timeout)
                    break
        except urllib3.exceptions.ReadTimeoutError:
            error = self._timeout(a, timeout)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            error = WorkerUnavailable(
                f"worker {a.url}: connection broke mid-answer ({type(e).__name__})",
                r.status_code)
        if error is not None:
            raise error
        return b"".join(chunks)

    @staticmethod
    def _timeout(a: Assignment, timeout: float) -> WorkerTimeout:
        return WorkerTimeout(
            f"worker {a.url}: no full answer within timeout={timeout:g}s; the GPU may have "
            "done the work, so running the job again may run it twice"
        )

    @staticmethod
    def _raise_worker_status(a: Assignment, status: int, text: str) -> None:
        msg = f"worker {a.url}: HTTP {status}: {text[:500]}"
        if status == 401:
            raise WorkerSignatureRejected(msg, status, text)
        if status in (408, 429) or status >= 500:
            raise WorkerUnavailable(msg, status, text)
        raise WorkerRejected(msg, status, text)

    def close(self) -> None:
        self.session.close()


def _error_text(text: str) -> str:
    """The server's ``{"error": ...}`` message, from the already redacted text."""
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:500]
    return text[:500]


def _decode(raw: bytes, r: requests.Response) -> Any:
    ctype = r.headers.get("Content-Type", "")
    text = raw.decode(r.encoding or "utf-8", "replace")
    if "json" in ctype or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
