"""``POST /route/``: ask Vast for a GPU worker for one job.

A 200 JSON object containing ``url`` is an assignment (the official client's rule),
anything else at 200 is "no worker yet"; 400 and 401 are permanent, 429 and the rest
are delays. The API key goes only to the route URL, in the Authorization header.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests

from dispatcher.errors import (
    RouteAuthError,
    RouteBadAnswer,
    RouteError,
    RouteRateLimited,
    RouteRejected,
    RouteUnavailable,
    VastError,
)
from dispatcher.vast.http import reason
from dispatcher.vast.protocol import (
    REPLAY_TIMEOUT,
    TEXT_LIMIT,
    Assignment,
    NoWorker,
    error_text,
    int_or_none,
    is_http_url,
    redact,
)

log = logging.getLogger("dispatcher.vast")


class RouteClient:
    def __init__(self, session: requests.Session, route_url: str, api_key: str | None,
                 route_timeout: float = 10.0, connect_timeout: float = 5.0) -> None:
        if not is_http_url(route_url):
            raise ValueError(f"VAST_ROUTE_URL: expected an http(s) URL, got {route_url!r}")
        self.session = session
        self.route_url = route_url
        self._key = api_key
        self.route_timeout = route_timeout
        self.connect_timeout = connect_timeout

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
        error: RouteError | None = None
        try:
            r = self.session.post(
                self.route_url, json=body, headers={"Authorization": f"Bearer {self._key}"},
                timeout=(self.connect_timeout, self.route_timeout), allow_redirects=False)
        except requests.Timeout as e:
            error = RouteUnavailable(f"route: timed out {where} (connect "
                                     f"{self.connect_timeout:g}s, answer {self.route_timeout:g}s):"
                                     f" {reason(e, self._key)}")
        except requests.RequestException as e:
            error = RouteUnavailable(f"route: connection failed {where}: {reason(e, self._key)}")
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
            to = self._clean(r.headers.get("Location", "?"))[:200]
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
