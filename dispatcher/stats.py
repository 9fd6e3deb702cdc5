"""Queue health per endpoint, read from the counters the Lua scripts keep.

Everything here is a read: gauges and totals are moved atomically with each
status change (``index_move`` in lua/_common.lua), so ``stats()`` costs two
round trips per endpoint (one pipeline, and the route budget in force from
lua/gate_state.lua) however many jobs there are.
"""

from __future__ import annotations

import math
from typing import Any

from dispatcher.jobs import KEY_PREFIX
from dispatcher.store import Store, gate_key, pending_key

LIVE = ("queued", "waiting", "running")
ENDED = ("succeeded", "failed", "expired", "cancelled")
RATE_WINDOW = 10  # seconds of route calls behind route_calls_per_s


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def endpoints(store: Store) -> list[str]:
    return sorted(store.redis.smembers(f"{KEY_PREFIX}endpoints"))


def collect(store: Store) -> dict[str, Any]:
    r = store.redis
    sec, usec = r.time()
    now = sec + usec / 1e6
    out: dict[str, Any] = {"queue": store.queue, "generated_at": now, "endpoints": {}}
    for ep in endpoints(store):
        out["endpoints"][ep] = _endpoint(store, ep, now, int(sec))
    return out


def _endpoint(store: Store, ep: str, now: float, sec: int) -> dict[str, Any]:
    pending = pending_key(store.queue, ep)
    p = store.redis.pipeline(transaction=False)
    p.hgetall(f"{KEY_PREFIX}counts:{ep}")
    p.hgetall(gate_key(ep))
    p.mget([f"{KEY_PREFIX}calls:{ep}:{s}" for s in range(sec - RATE_WINDOW, sec)])
    p.lrange(f"{KEY_PREFIX}samples:{ep}:wait", 0, -1)
    p.lrange(f"{KEY_PREFIX}samples:{ep}:run", 0, -1)
    for band in range(10):  # the oldest job of each priority band (see pending_score)
        p.zrangebyscore(pending, band * 1e10, (band + 1) * 1e10, start=0, num=1,
                        withscores=True)
    counts, gate, calls, waits, runs, *oldest = p.execute()
    created = [score - band * 1e10 for band, hit in enumerate(oldest) for _, score in hit]
    wait_s = [float(x) for x in waits]
    run_s = [float(x) for x in runs]
    level, rate = store.gate_state(ep)
    return {
        **{k: max(0, int(counts.get(k, 0))) for k in LIVE + ENDED},
        "oldest_wait_s": round(now - min(created), 3) if created else None,
        "last_route_status": gate.get("last_status") or None,
        "last_route_at": float(gate["last_status_at"]) if gate.get("last_status_at") else None,
        "route_calls": int(gate.get("calls", 0)),
        "route_calls_per_s": sum(int(c or 0) for c in calls) / RATE_WINDOW,
        "route_429s": int(gate.get("r429", 0)),
        "route_deferred": int(gate.get("deferred", 0)),
        "route_rate": rate if rate > 0 else None,
        "route_backoff_level": level,
        "wait_p50_s": percentile(wait_s, 0.5),
        "wait_p95_s": percentile(wait_s, 0.95),
        "run_p50_s": percentile(run_s, 0.5),
        "run_p95_s": percentile(run_s, 0.95),
    }
