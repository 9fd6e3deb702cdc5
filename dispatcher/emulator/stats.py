"""The emulator's ground truth, read by tests and benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ROUTE_OUTCOMES = ("calls", "assigned", "no_worker", "bad_request", "unauthorized",
                  "rate_limited", "server_error", "reset")
WORKER_COUNTERS = ("executions", "succeeded", "failed", "hung", "rejected_signature",
                   "rejected_replay", "malformed", "admission_rejected")


@dataclass
class Stats:
    route: Counter = field(default_factory=Counter)
    worker: Counter = field(default_factory=Counter)
    executions_by_payload: Counter = field(default_factory=Counter)
    worker_seconds_by_payload: dict[str, float] = field(default_factory=dict)
    route_seconds_total: float = 0.0
    assignments: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        execs = dict(self.executions_by_payload)
        return {
            "route": {k: self.route.get(k, 0) for k in ROUTE_OUTCOMES},
            "assignments": self.assignments,
            "workers": {**{k: self.worker.get(k, 0) for k in WORKER_COUNTERS},
                        "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight},
            **{k: self.worker.get(k, 0) for k in WORKER_COUNTERS},
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "executions_by_payload": execs,
            "duplicate_executions": sum(n - 1 for n in execs.values() if n > 1),
            "worker_seconds_by_payload": dict(self.worker_seconds_by_payload),
            "route_seconds_total": self.route_seconds_total,
        }
