"""The emulator's ground truth, read by tests and benchmarks (``GET /_emulator/stats``).

Tests assert on what really happened at the "GPU" (how often each payload ran), never on
what the dispatcher believes happened.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ROUTE_OUTCOMES = ("calls", "assigned", "no_worker", "bad_request", "unauthorized",
                  "rate_limited", "server_error", "reset", "scripted")
WORKER_COUNTERS = ("executions", "succeeded", "failed", "hung", "cancelled",
                   "cancelled_by_client", "cancelled_while_queued",
                   "rejected_signature", "rejected_replay", "rejected_tampered", "malformed",
                   "admission_rejected", "warmup_rejected",
                   "streams", "streams_completed", "streams_dropped", "stream_pieces",
                   "dripped", "body_dripped", "nested_answers", "huge_answers", "cut_answers")
# Real PyWorkers' reports (docs/emulator.md, "Develop your PyWorker offline").
PYWORKER_COUNTERS = ("reports", "reports_rejected", "delete_requests", "requests_finished")


@dataclass
class Stats:
    route: Counter[str] = field(default_factory=Counter)
    worker: Counter[str] = field(default_factory=Counter)
    pyworker: Counter[str] = field(default_factory=Counter)
    executions_by_payload: Counter[str] = field(default_factory=Counter)
    worker_seconds_by_payload: dict[str, float] = field(default_factory=dict)
    cancelled_by_payload: Counter[str] = field(default_factory=Counter)
    stream_pieces_by_payload: Counter[str] = field(default_factory=Counter)
    route_seconds_total: float = 0.0
    assignments: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0

    def execution_started(self, pid: str) -> int:
        """Count one execution of payload ``pid``; returns how many it has had so far."""
        self.worker["executions"] += 1
        self.executions_by_payload[pid] += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        return self.executions_by_payload[pid]

    def execution_ended(self, pid: str, seconds: float) -> None:
        self.in_flight -= 1
        self.worker_seconds_by_payload[pid] = seconds

    def client_left(self, pid: str, queued: bool) -> None:
        """The client closed its connection before the answer's last byte: the work stops."""
        self.worker["cancelled_by_client"] += 1
        if queued:
            self.worker["cancelled_while_queued"] += 1
        self.cancelled_by_payload[pid] += 1

    def piece_sent(self, pid: str) -> None:
        self.worker["stream_pieces"] += 1
        self.stream_pieces_by_payload[pid] += 1

    def reset(self) -> None:
        """Zero every counter; executions still running stay counted as in flight."""
        in_flight = self.in_flight
        self.__init__()  # type: ignore[misc]
        self.in_flight = self.peak_in_flight = in_flight

    def snapshot(self) -> dict[str, Any]:
        execs = dict(self.executions_by_payload)
        workers = {k: self.worker.get(k, 0) for k in WORKER_COUNTERS}
        live = {"in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight}
        return {
            "route": {k: self.route.get(k, 0) for k in ROUTE_OUTCOMES},
            "assignments": self.assignments,
            "workers": {**workers, **live},
            **workers,  # also at the top level, for short assertions
            **live,
            "executions_by_payload": execs,
            "duplicate_executions": sum(n - 1 for n in execs.values() if n > 1),
            "worker_seconds_by_payload": dict(self.worker_seconds_by_payload),
            "cancelled_by_payload": dict(self.cancelled_by_payload),
            "stream_pieces_by_payload": dict(self.stream_pieces_by_payload),
            "route_seconds_total": self.route_seconds_total,
            "pyworker": {k: self.pyworker.get(k, 0) for k in PYWORKER_COUNTERS},
        }
