"""Vast's control plane for real PyWorkers: what ``run.vast.ai`` is to a PyWorker.

A PyWorker (``vastai.serverless.server``) started with ``REPORT_ADDR`` at the emulator
fetches ``GET /pubkey/``, then reports every few seconds with ``POST /worker_status/``
(its ``id`` = ``CONTAINER_ID``, ``mtoken`` = ``MASTER_TOKEN``, ``url``, ``loadtime`` > 0
once its model is loaded, ``error_msg``, load figures) and lists finished requests with
``POST /delete_requests/`` (``worker_id``, ``mtoken``, ``requests: [{request_idx,
status, success, ...}]``). The ``mtoken`` names the endpoint (or matches an endpoint's
configured ``mtoken``), which must have ``workers_from: "pyworker"``.

The answers' bodies are the emulator's own (PyWorker reads only the HTTP status); a
report the emulator cannot use is a 400 or 401 naming why, never echoing the token.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from dispatcher.emulator.fleet import Endpoint, Fleet, PyWorker, now

# Load figures kept from each report, as sent, for the stats.
REPORTED = ("cur_load", "new_load", "rej_load", "max_perf", "cur_perf",
            "num_requests_working", "num_requests_recieved", "working_request_idxs", "version")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


class ControlPlane:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def _body(self, request: web.Request) -> tuple[dict[str, Any] | None, Endpoint | None,
                                                         web.Response | None]:
        st = self.fleet.stats.pyworker
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            st["reports_rejected"] += 1
            return None, None, _error(400, "body must be a JSON object")
        token = body.get("mtoken")
        name = self.fleet.config.pyworker_endpoint(token) if isinstance(token, str) else None
        ep = self.fleet.endpoints.get(name) if name is not None else None
        if ep is None:
            st["reports_rejected"] += 1
            return None, None, _error(401, "mtoken: no endpoint with workers_from 'pyworker' "
                                           "is named so or has it as its mtoken")
        return body, ep, None

    async def worker_status(self, request: web.Request) -> web.Response:
        body, ep, refusal = await self._body(request)
        if refusal is not None:
            return refusal
        assert body is not None and ep is not None
        st = self.fleet.stats.pyworker
        wid, url = body.get("id"), body.get("url")
        problem = None
        if isinstance(wid, bool) or not isinstance(wid, int):
            problem = f"id: must be an integer (CONTAINER_ID), got {wid!r}"
        elif not isinstance(url, str) or not _http_url(url):
            problem = f"url: must be an http(s) URL with a host and port, got {url!r}"
        elif not _number(body.get("loadtime", 0.0)) or body.get("loadtime", 0.0) < 0:
            problem = f"loadtime: must be a number >= 0, got {body.get('loadtime')!r}"
        elif not isinstance(body.get("error_msg", ""), str | type(None)):
            problem = f"error_msg: must be a string, got {body.get('error_msg')!r}"
        if problem:
            st["reports_rejected"] += 1
            return _error(400, problem)
        assert isinstance(wid, int) and isinstance(url, str)
        t = now()
        pw = ep.pyworkers.get(wid)
        loadtime = float(body.get("loadtime") or 0.0)
        if pw is None:
            pw = ep.pyworkers[wid] = PyWorker(ep, wid, url)
        elif pw.url != url or (pw.loadtime > 0 and loadtime == 0):  # a new process
            pw.url = url
            pw.forget_assignments()
        pw.last_report = t
        pw.reports += 1
        pw.loadtime = loadtime
        pw.error_msg = body.get("error_msg") or ""
        pw.status = {k: body[k] for k in REPORTED if k in body}
        st["reports"] += 1
        return web.json_response({"ok": True})

    async def delete_requests(self, request: web.Request) -> web.Response:
        body, ep, refusal = await self._body(request)
        if refusal is not None:
            return refusal
        assert body is not None and ep is not None
        st = self.fleet.stats.pyworker
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not all(isinstance(r, dict) for r in reqs):
            st["reports_rejected"] += 1
            return _error(400, f"requests: must be a list of objects, got {reqs!r}")
        wid = body.get("worker_id")
        pw = ep.pyworkers.get(wid) if isinstance(wid, int) else None
        st["delete_requests"] += 1
        for r in reqs:
            status = r.get("status")
            label = status if isinstance(status, str) else "unknown"
            st["requests_finished"] += 1
            if pw is not None:
                pw.done(r.get("request_idx"))
                pw.finished[label] += 1
        if pw is not None:
            pw.last_report = now()
        return web.json_response({"ok": True})


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is not None)
    except ValueError:
        return False
