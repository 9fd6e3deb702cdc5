"""``POST /route/``: ask Vast for a GPU worker for one job.

A 200 JSON object containing ``url`` is an assignment (the official client's rule),
anything else at 200 is "no worker yet"; 400 and 401 are permanent, 429 and the rest
are delays. The API key goes only to the route URL, in the Authorization header;
``route_timeout`` bounds the whole call, however slowly the answer arrives.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

from dispatcher.errors import (
    RouteAuthError,
    RouteBadAnswer,
    RouteRateLimited,
    RouteRejected,
    RouteUnavailable,
    VastError,
)
from dispatcher.net import WATCHDOG, NetError, Pool, Target, Watchdog, read_all
from dispatcher.vast.protocol import (
    REPLAY_TIMEOUT,
    TEXT_LIMIT,
    Assignment,
    NoWorker,
    decode_text,
    error_text,
    int_or_none,
    is_http_url,
    redact,
)

log = logging.getLogger("dispatcher.vast")

# A route answer is a few hundred bytes; a bigger one is not Vast's.
ANSWER_LIMIT = 1024 * 1024


class RouteClient:
    def __init__(self, pool: Pool, route_url: str, api_key: str | None,
                 route_timeout: float = 10.0, connect_timeout: float = 5.0, *,
                 tls: ssl.SSLContext | None = None, watchdog: Watchdog = WATCHDOG) -> None:
        if not is_http_url(route_url):
            raise ValueError(f"VAST_ROUTE_URL: expected an http(s) URL, got {route_url!r}")
        if api_key is not None and any(ord(c) < 33 or ord(c) == 127 for c in api_key):
            # It could not be sent as a header, and the error saying so would quote it.
            raise ValueError("VAST_API_KEY: holds whitespace or a control character; "
                             "the value is not shown")
        self.pool = pool
        self.route_url = route_url
        self.target = Target.parse(route_url)
        self._key = api_key
        self.route_timeout = route_timeout
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.watchdog = watchdog

    def _clean(self, text: str) -> str:
        return redact(text, self._key)[:TEXT_LIMIT]

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
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"}
        data = json.dumps(body, separators=(",", ":")).encode()
        error: VastError | None = None
        try:
            with self.pool.exchange("POST", self.target, body=data, headers=headers,
                                    guard=self.watchdog.guard(self.route_timeout),
                                    connect_timeout=self.connect_timeout,
                                    read_timeout=self.route_timeout, tls=self.tls) as ex:
                status, answer_headers = ex.status, ex.headers
                raw, cut = read_all(ex, ANSWER_LIMIT)
        except NetError as e:
            if e.kind in ("deadline", "connect_timeout"):
                error = RouteUnavailable(f"route: no answer {where} within "
                                         f"VAST_ROUTE_TIMEOUT={self.route_timeout:g}s", e.status)
            else:
                error = RouteUnavailable(f"route: connection failed {where}: "
                                         f"{self._clean(str(e))[:300]}", e.status)
        if error is not None:
            raise error
        if cut:
            raise RouteUnavailable(f"route: answer {where} larger than {ANSWER_LIMIT} bytes; "
                                   "not Vast's", status)
        return self._route_answer(where, status, answer_headers, raw)

    def _route_answer(self, where: str, status: int, headers: Mapping[str, str],
                      raw: bytes) -> Assignment | NoWorker:
        text = self._clean(decode_text(raw, headers.get("Content-Type")))
        if status == 200:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
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
                status="" if raw_status is None else self._clean(str(raw_status)),
                request_idx=int_or_none(data.get("request_idx")),
                endpoint=ep if isinstance(ep, str) else None,
            )
        detail = error_text(text)
        if status == 401:
            raise RouteAuthError(f"route: 401 authentication failed {where}: {detail}",
                                 status, text)
        if status == 400:
            raise RouteRejected(f"route: 400 rejected {where}: {detail}", status, text)
        if status == 429:
            raise RouteRateLimited(f"route: 429 rate limited {where}: {detail}", status, text)
        if 300 <= status < 400:
            to = self._clean(headers.get("Location", "?"))[:200]
            detail = f"redirect to {to} (set VAST_ROUTE_URL to the final address)"
        raise RouteUnavailable(f"route: unexpected HTTP {status} {where}: {detail}",
                               status, text)

    def _assignment(self, where: str, data: dict[str, Any], text: str) -> Assignment:
        # The one check that protects us: where the payload would go.
        if not is_http_url(data["url"]):
            url = self._clean(str(data["url"]))[:200]
            raise RouteBadAnswer(f"route: worker url {url!r} {where} is not an http(s) address "
                                 "with a host; not forwarded", 200, text)
        return Assignment(auth_data=data)
