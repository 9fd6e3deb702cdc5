"""``POST /route/``: Vast's routing API, with its answers and injectable faults.

Order of checks: injected connection reset, Bearer key (401 JSON), body (400 JSON), a
scripted answer if the endpoint has one left, rate limit per (endpoint, key) (429 plain
text, no Retry-After), injected 5xx and 429, then an assignment or a "no worker" answer in
the endpoint's shape. Kept cheap: benchmarks call it thousands of times a second (the RSA
signature is per worker url, computed once).

Each assignment to a simulated worker is recorded as issued, so the worker can check that
what it receives is exactly that (``workers``); PyWorkers check for themselves.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import secrets
import time
from typing import Any

from aiohttp import web

from dispatcher.emulator.fleet import (
    ASSIGNMENT_FIELDS,
    REQUIRED_AUTH,
    Endpoint,
    Fleet,
    Issued,
    PyWorker,
    Worker,
    canonical,
    now,
    required_auth,
)
from dispatcher.emulator.workers import Workers, reset

PUBLISHED_REQUIRED = ASSIGNMENT_FIELDS["published"]
REPLAY_TIMEOUT = 60.0  # the official client's replay_timeout: pending demand expires after it
RATE_LIMITED = "API requests too frequent"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Router:
    def __init__(self, fleet: Fleet, workers: Workers) -> None:
        self.fleet = fleet
        self.workers = workers
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._id_prefix = secrets.token_hex(6)
        self._ids = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await self._route(request)
        finally:
            self.fleet.stats.route_seconds_total += time.perf_counter() - started

    async def _route(self, request: web.Request) -> web.StreamResponse:
        fleet = self.fleet
        cfg, st, rng = fleet.config, fleet.stats, fleet.rng
        st.route["calls"] += 1
        if cfg.route_latency:
            await asyncio.sleep(cfg.route_latency)
        if cfg.route_reset_rate and rng.random() < cfg.route_reset_rate:
            st.route["reset"] += 1
            await request.read()
            reset(request.transport)
            return web.Response(status=500)  # never sent: the connection is gone
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not key or not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
            st.route["unauthorized"] += 1
            return _error(401, "Invalid or missing API key")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            st.route["bad_request"] += 1
            return _error(400, "request body must be a JSON object")
        error, name, cost = self._validate(body)
        if error:
            st.route["bad_request"] += 1
            return _error(400, error)
        ep = fleet.endpoints[name]
        if ep.script:
            return self._scripted(request, ep, ep.script.popleft(), body, cost)
        if cfg.rate_limit and self._rate_limited(name, key, cfg.rate_limit):
            st.route["rate_limited"] += 1
            return web.Response(status=429, text=RATE_LIMITED)
        if cfg.route_error_rate and rng.random() < cfg.route_error_rate:
            st.route["server_error"] += 1
            return web.Response(status=rng.choice((500, 502, 503)), text="upstream error")
        if cfg.route_429_rate and rng.random() < cfg.route_429_rate:
            st.route["rate_limited"] += 1
            return web.Response(status=429, text=RATE_LIMITED)
        return web.json_response(self.assign(ep, body, cost))

    def _validate(self, body: dict[str, Any]) -> tuple[str | None, str, float]:
        name = body.get("endpoint")
        cost = body.get("cost", 100.0)  # Vast's documented default
        if not isinstance(name, str) or not name:
            return "missing or invalid parameter: endpoint", "", 0.0
        if name not in self.fleet.endpoints:
            return f"endpoint {name!r} not found", name, 0.0
        if isinstance(cost, bool) or not isinstance(cost, int | float):
            return "invalid parameter: cost must be a number", name, 0.0
        if not math.isfinite(cost) or cost < 0:
            return "invalid parameter: cost must be a finite number >= 0", name, 0.0
        return None, name, float(cost)

    def _rate_limited(self, endpoint: str, key: str, rl: dict[str, float]) -> bool:
        """A token bucket per (endpoint, key): ``burst`` at once, ``rate`` per second after."""
        t = now()
        burst = rl["burst"]
        tokens, last = self.buckets.get((endpoint, key), (burst, t))
        tokens = min(burst, tokens + (t - last) * rl["rate"])
        limited = tokens < 1
        self.buckets[(endpoint, key)] = (tokens if limited else tokens - 1, t)
        return limited

    def assign(self, ep: Endpoint, body: dict[str, Any], cost: float) -> dict[str, Any]:
        """A worker assignment, or "no worker" (recording demand that may cold-start some)."""
        idx = self._request_idx(body)
        worker = ep.pick_worker()
        if worker is None:
            return self._no_worker(ep, body, idx)
        return self._assignment(ep, worker, cost, idx)

    def _request_idx(self, body: dict[str, Any]) -> int:
        """The job's place in the queue: the one it sent back, or a new one."""
        fleet = self.fleet
        idx = body.get("request_idx")
        if type(idx) is not int or idx <= 0:  # a new request: a new request_idx
            fleet.last_request_idx += 1
            return fleet.last_request_idx
        if idx > fleet.last_request_idx:  # never hand out a number a client already holds
            fleet.last_request_idx = idx
        return idx

    def _request_id(self) -> str:
        self._ids += 1
        return f"{self._id_prefix}{self._ids:x}"

    def _no_worker(self, ep: Endpoint, body: dict[str, Any], idx: int) -> dict[str, Any]:
        timeout = body.get("replay_timeout")
        if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                or not 0 < timeout < math.inf):
            timeout = REPLAY_TIMEOUT
        ep.pending[idx] = now() + timeout
        for w in ep.workers_to_start():
            self.workers.start_cold(w, ep.config.cold_start)
        self.fleet.stats.route["no_worker"] += 1
        answer: dict[str, Any] = {"endpoint": ep.name, "status": ep.status_text(),
                                  "__request_id": self._request_id()}
        if ep.config.answer_shape == "live":
            answer["request_idx"] = idx
        return answer

    def _assignment(self, ep: Endpoint, worker: Worker | PyWorker, cost: float, idx: int,
                    script: dict[str, Any] | None = None) -> dict[str, Any]:
        fleet, st = self.fleet, self.fleet.stats
        ep.pending.pop(idx, None)
        ep.next_reqnum += 1
        reqnum = ep.next_reqnum
        t = now()
        if isinstance(worker, PyWorker):
            worker.take(idx, t + ep.config.assignment_ttl)
        else:
            worker.expected[reqnum] = t + ep.config.assignment_ttl
            worker.last_active = t
        answer: dict[str, Any] = {"endpoint": ep.name, "url": worker.url, "cost": cost,
                                  "reqnum": reqnum, "signature": fleet.key.sign(worker.url)}
        shape = ep.config.answer_shape
        if shape == "live":
            answer["request_idx"] = idx
        answer["__request_id"] = self._request_id()
        if script is None:
            required = REQUIRED_AUTH if shape == "live" else PUBLISHED_REQUIRED
        else:
            answer = _edited(answer, script)
            required = required_auth(shape, answer)
        if isinstance(worker, Worker):  # a real PyWorker checks for itself
            ep.issue(Issued(reqnum, worker, answer, canonical(answer), required, t))
        st.route["assigned"] += 1
        st.assignments += 1
        return answer

    def _scripted(self, request: web.Request, ep: Endpoint, script: dict[str, Any],
                  body: dict[str, Any], cost: float) -> web.StreamResponse:
        self.fleet.stats.route["scripted"] += 1
        if "reset" in script:
            reset(request.transport)
            return web.Response(status=500)  # never sent: the connection is gone
        if "status" in script:
            if "json" in script:
                return web.json_response(script["json"], status=script["status"],
                                         headers=script["headers"])
            return web.Response(status=script["status"], text=script["text"],
                                headers=script["headers"])
        idx = self._request_idx(body)
        worker = ep.pick_worker(full_too=True) if "assign" in script else None
        if worker is None:  # a scripted no-worker, or an assignment with no ready worker
            answer = self._no_worker(ep, body, idx)
            return web.json_response(_edited(answer, script) if "no_worker" in script
                                     else answer)
        return web.json_response(self._assignment(ep, worker, cost, idx, script))


def _edited(answer: dict[str, Any], script: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in answer.items() if k not in script["omit"]}
    out.update(script["extra"])
    return out
