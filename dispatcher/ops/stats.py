"""Queue health per endpoint, read from the counters the Lua scripts keep.

Everything here is a read: gauges and totals are moved atomically with each
status change (``index_move`` in store/lua/lib/index.lua), so ``stats()`` costs two
round trips per endpoint (one pipeline, and the route budget in force from
store/lua/gate_state.lua) however many jobs there are.
"""

from __future__ import annotations

import math
from typing import Any

from dispatcher.config import Settings
from dispatcher.model import ENDED, LIVE, Status
from dispatcher.store import Store, connect

RATE_WINDOW = 10  # seconds of route calls behind route_calls_per_s
LAST_FAILURES = 3  # the newest failed or expired jobs shown per endpoint (job index)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def reader(settings: Settings, timeout: float = 2.0) -> Store:
    """A store for a tool that must answer at once, Redis up or not (a Prometheus scrape
    times out in 10 s): one retry, short socket timeouts. Jobs' own store rides out a
    Redis restart instead."""
    return Store(connect(settings.redis_url, 4, retries=1, timeout=timeout), settings.queue,
                 settings.route_budget(), hook_queue=settings.webhook_queue)


def collect(store: Store) -> dict[str, Any]:
    now = store.now()
    out: dict[str, Any] = {"queue": store.queue, "generated_at": now, "endpoints": {},
                           # Deliveries not over yet: it grows while no `dispatcher worker
                           # --webhooks` runs (plain workers do not deliver).
                           "webhooks_queued": store.hooks_waiting()}
    for ep in store.endpoints():
        out["endpoints"][ep] = _endpoint(store, ep, now)
    return out


def _endpoint(store: Store, ep: str, now: float) -> dict[str, Any]:
    h = store.endpoint_health(ep, now, RATE_WINDOW)
    counts, gate = h.counts, h.gate
    level, rate = store.gate_state(ep)
    return {
        **{str(k): max(0, int(counts.get(k, 0))) for k in LIVE + ENDED},
        "oldest_wait_s": round(now - h.oldest_created, 3) if h.oldest_created is not None else None,
        "last_route_status": gate.get("last_status") or None,
        "last_route_at": float(gate["last_status_at"]) if gate.get("last_status_at") else None,
        "route_calls": int(gate.get("calls", 0)),
        "route_calls_per_s": sum(h.calls) / RATE_WINDOW,
        "route_429s": int(gate.get("r429", 0)),
        "route_noise_holds": int(gate.get("noise_holds", 0)),
        "route_deferred": int(gate.get("deferred_calls", 0)),
        "route_rate": rate if rate > 0 else None,
        "route_backoff_level": level,
        "wait_p50_s": percentile(h.waits, 0.5),
        "wait_p95_s": percentile(h.waits, 0.95),
        "run_p50_s": percentile(h.runs, 0.5),
        "run_p95_s": percentile(h.runs, 0.95),
        "last_failures": last_failures(store, ep),
    }


def last_failures(store: Store, ep: str, n: int = LAST_FAILURES) -> list[dict[str, Any]]:
    """The endpoint's newest failed or expired jobs, from the job index (two round
    trips, no scan), for ``top`` and the dashboards."""
    return [{"id": j.id, "endpoint": ep, "status": j.status, "error_kind": j.error_kind,
             "error": (j.error or "")[:200] or None, "finished_at": j.finished_at}
            for j in store.list_jobs([ep], [Status.FAILED, Status.EXPIRED], limit=n)]
