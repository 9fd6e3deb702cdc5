"""What the terminal views (``top``, ``stats``) and the browser dashboard share: how a
figure is written, a short history of successive ``stats()`` reads, and the newest
failures.

History is kept by whoever reads: ``dispatcher top`` in its own process (the last minute),
the gateway for its dashboard (the last 15 minutes). Redis keeps no time series: rates
come from the difference of the ended-job totals between two reads. Failures come from
the job index (``stats()``' ``last_failures``, ``list_jobs``): no scan.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.model import ENDED

# The jobs not on a GPU yet (model.PENDING): what an operator means by "waiting" in a
# cold start; the split between the Celery queue and the waiting set moves each poll.
PENDING_FIELDS = ("queued", "waiting")
FAILED_FIELDS = ("failed", "expired")
FAILED_STATUSES = ("failed", "expired")
SPARKS = "▁▂▃▄▅▆▇█"


def fixed(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals, halves rounded up: the same text as the
    dashboard's ``fixed()`` in JavaScript (Python's format rounds halves to even, toFixed
    does not: 0.0525 s was 52ms in top and 53ms on the dashboard)."""
    m = 10 ** digits
    return f"{math.floor(value * m + 0.5) / m:.{digits}f}"


def seconds(value: float | None) -> str:
    """A duration in at most 6 characters: 850ms, 4.1s, 2m05s, 3h10m; '-' for none."""
    if value is None:
        return "-"
    if value < 1:
        return f"{fixed(value * 1000, 0)}ms"
    if value < 60:
        return f"{fixed(value, 1)}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    return fixed(value, 0) if value >= 100 else fixed(value, 1)


def route(s: Mapping[str, Any]) -> str:
    """Route calls/s against the budget in force: ``38.2/40``, ``38.2/40 L2`` after two
    halvings for 429s, ``3.0`` with no budget."""
    text = rate(s.get("route_calls_per_s"))
    if s.get("route_rate") is not None:
        text += f"/{s['route_rate']:g}"
    if s.get("route_backoff_level"):
        text += f" L{s['route_backoff_level']}"
    return text


def pending(s: Mapping[str, Any]) -> int:
    return sum(int(s.get(k) or 0) for k in PENDING_FIELDS)


def finished(s: Mapping[str, Any]) -> int:
    return sum(int(s.get(k) or 0) for k in ENDED)


def activity(s: Mapping[str, Any]) -> tuple[int, int]:
    """Sort key, busiest first: live jobs, then jobs ever ended."""
    return (-(pending(s) + int(s.get("running") or 0)), -finished(s))


def order(endpoints: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(endpoints, key=lambda ep: (*activity(endpoints[ep]), ep))


@dataclass(frozen=True)
class Point:
    """One endpoint at one ``stats()`` read, and the rates since the read before it."""

    t: float
    pending: int
    running: int
    done_per_s: float | None  # jobs ended (any way) per second since the previous read
    failed_per_s: float | None

    def as_list(self) -> list[Any]:
        return [round(self.t, 3), self.pending, self.running,
                None if self.done_per_s is None else round(self.done_per_s, 3),
                None if self.failed_per_s is None else round(self.failed_per_s, 3)]


POINT_FIELDS = ["t", "pending", "running", "done_per_s", "failed_per_s"]


class History:
    """Successive ``stats()`` reads, per endpoint, over the last ``window`` seconds (by
    the stats' own clock, Redis' TIME, so every reader agrees)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._points: dict[str, deque[Point]] = {}
        self._totals: dict[str, tuple[float, int, int]] = {}

    def add(self, stats: Mapping[str, Any]) -> None:
        t = float(stats["generated_at"])
        eps: Mapping[str, Mapping[str, Any]] = stats.get("endpoints", {})
        for ep, s in eps.items():
            done = finished(s)
            failed = sum(int(s.get(k) or 0) for k in FAILED_FIELDS)
            before = self._totals.get(ep)
            done_rate = failed_rate = None
            if before is not None and t > before[0]:
                dt = t - before[0]
                # Totals only grow; a drop is an endpoint forgotten and seen again.
                done_rate = max(0, done - before[1]) / dt
                failed_rate = max(0, failed - before[2]) / dt
            self._totals[ep] = (t, done, failed)
            points = self._points.setdefault(ep, deque())
            points.append(Point(t, pending(s), int(s.get("running") or 0), done_rate,
                                failed_rate))
        for ep in list(self._points):
            points = self._points[ep]
            while points and points[0].t < t - self.window:
                points.popleft()
            if not points:
                del self._points[ep]
                self._totals.pop(ep, None)

    def points(self, ep: str, since: float | None = None) -> list[Point]:
        pts = list(self._points.get(ep, ()))
        return pts if since is None else [p for p in pts if p.t > since]

    def endpoints(self) -> list[str]:
        return list(self._points)


def sparkline(values: Iterable[float | None], width: int) -> str:
    """The last ``width`` values as block characters scaled to their own maximum; a
    missing value is a space, zero the lowest block (the line stays visible)."""
    vals = list(values)[-width:] if width > 0 else []
    top = max((v for v in vals if v is not None), default=0.0)
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        elif top <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))])
    return "".join(out).rjust(width)


@dataclass(frozen=True)
class Failure:
    id: str
    endpoint: str
    status: str
    error_kind: str | None
    error: str | None
    finished_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "status": self.status,
                "error_kind": self.error_kind, "error": self.error,
                "finished_at": self.finished_at}


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def failures_of(endpoint: str, jobs: Iterable[Any]) -> list[Failure]:
    """Failures from ``last_failures`` entries or ``list_jobs``' ``Job`` views."""
    return [Failure(id=str(_field(j, "id")), endpoint=str(_field(j, "endpoint") or endpoint),
                    status=str(_field(j, "status") or "failed"),
                    error_kind=_field(j, "error_kind"), error=_field(j, "error"),
                    finished_at=_field(j, "finished_at"))
            for j in jobs if _field(j, "id")]


def newest_first(found: list[Failure]) -> list[Failure]:
    return sorted(found, key=lambda f: f.finished_at or 0.0, reverse=True)


def failures_in(stats: Mapping[str, Any]) -> dict[str, list[Failure]] | None:
    """The newest failures per endpoint that ``stats()`` carries (``last_failures``,
    from the job index), or None if this version's stats carry none."""
    eps: Mapping[str, Mapping[str, Any]] = stats.get("endpoints", {})
    if not any("last_failures" in s for s in eps.values()):
        return None
    return {ep: newest_first(failures_of(ep, s.get("last_failures") or []))
            for ep, s in eps.items()}
