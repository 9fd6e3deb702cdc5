"""The emulated GPU fleet's state: endpoints, their workers, demand and capacity.

Plain data and pure decisions (who gets the next assignment, how many workers demand
wants). Everything runs on the emulator's one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dispatcher.emulator.config import EmulatorConfig, EndpointConfig
from dispatcher.emulator.signing import SigningKey
from dispatcher.emulator.stats import Stats
from dispatcher.emulator.tls import WorkerTLS

STOPPED, LOADING, READY = "stopped", "loading", "ready"
ERRORED, STALE = "errored", "stale"  # PyWorkers only: reported an error_msg; stopped reporting
# What Vast's PyWorker requires of auth_data (it answers 422 naming each one missing).
REQUIRED_AUTH = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")
# Route answers by shape: "published" is Vast's API reference, "live" what Vast sends.
ASSIGNMENT_FIELDS = {
    "live": ("endpoint", "url", "cost", "reqnum", "signature", "request_idx", "__request_id"),
    "published": ("endpoint", "url", "cost", "reqnum", "signature", "__request_id"),
}
NO_WORKER_FIELDS = {
    "live": ("endpoint", "status", "__request_id", "request_idx"),
    "published": ("endpoint", "status", "__request_id"),
}


def required_auth(shape: str, issued: Any) -> tuple[str, ...]:
    """What an emulated worker answers 422 without: what a real PyWorker requires ("live"),
    or every field issued ("published"); never a field the assignment was issued without."""
    if shape == "published":
        return tuple(issued)
    return tuple(f for f in REQUIRED_AUTH if f in issued)


def now() -> float:
    return time.monotonic()


def payload_id(payload: Any) -> str:
    """``payload["id"]`` when there is one, else a hash of the payload's canonical JSON."""
    if isinstance(payload, dict) and "id" in payload:
        return str(payload["id"])
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def canonical(auth: Any) -> str:
    """One text per JSON value whatever its key order: how "verbatim" is compared."""
    return json.dumps(auth, sort_keys=True, separators=(",", ":"), default=repr)


def draw_latency(latency: dict[str, Any], rng: random.Random) -> float:
    kind = latency["kind"]
    if kind == "fixed":
        return latency["seconds"]
    if kind == "uniform":
        return rng.uniform(latency["low"], latency["high"])
    return latency["median"] * math.exp(rng.gauss(0.0, latency["sigma"]))


class Gate:
    """A worker's execution slots: FIFO order, with the limit read live so a config
    patch of ``concurrency`` applies to requests already waiting."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.limit() and not self._waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted a slot just as it was cancelled
                self.release()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.running -= 1
        self.wake()

    def wake(self) -> None:
        while self._waiters and self.running < self.limit():
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)


@dataclass(eq=False)
class Worker:
    """One GPU instance: a loopback port of its own, listening only while ready."""

    endpoint: Endpoint
    index: int
    sock: socket.socket | None  # bound but not listening while stopped: connections refused
    port: int
    state: str = STOPPED
    generation: int = 0  # bumped on every start/stop, so stale timers do nothing
    last_active: float = 0.0
    warmup_left: int = 0
    opening: bool = False
    gone: bool = False  # discarded: its port is released for good
    expected: dict[int, float] = field(default_factory=dict)  # reqnum -> deadline to arrive
    runner: web.AppRunner | None = None
    site: web.SockSite | None = None
    timer: asyncio.TimerHandle | None = None
    ssl_context: ssl.SSLContext | None = None  # HTTPS (the endpoint's tls), fixed at creation
    gate: Gate = field(init=False)
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.gate = Gate(lambda: self.endpoint.config.concurrency)
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    @property
    def hangs(self) -> bool:
        return self.index < self.endpoint.config.hang_workers

    @property
    def outstanding(self) -> int:
        """Assigned-not-yet-arrived + queued + running."""
        return len(self.expected) + self.gate.queued + self.gate.running


@dataclass(eq=False)
class PyWorker:
    """A real Vast PyWorker process, known from what it reports (``POST /worker_status/``).

    Routable while it says it is loaded (``loadtime`` > 0), reports no ``error_msg``, and
    has reported within the endpoint's ``report_timeout``. Its load is the assignments
    routed to it that it has not yet reported finished (``POST /delete_requests/``)."""

    endpoint: Endpoint
    id: int
    url: str
    last_report: float = 0.0
    reports: int = 0
    loadtime: float = 0.0
    error_msg: str = ""
    status: dict[str, Any] = field(default_factory=dict)  # the last report's load figures
    assigned: dict[int, list[float]] = field(default_factory=dict)  # request_idx -> deadlines
    outstanding: int = 0
    finished: Counter[str] = field(default_factory=Counter)  # by the status it reported

    def state(self, t: float) -> str:
        if t - self.last_report > self.endpoint.config.report_timeout:
            return STALE
        if self.error_msg:
            return ERRORED
        return READY if self.loadtime > 0 else LOADING

    def take(self, idx: int, deadline: float) -> None:
        self.assigned.setdefault(idx, []).append(deadline)
        self.outstanding += 1

    def done(self, idx: Any) -> bool:
        """One assignment for ``idx`` finished; False if none was outstanding."""
        deadlines = self.assigned.get(idx) if isinstance(idx, int) else None
        if not deadlines:
            return False
        deadlines.pop(0)
        if not deadlines:
            del self.assigned[idx]
        self.outstanding -= 1
        return True

    def expire(self, t: float) -> None:
        """Assignments never reported finished free their slot after ``assignment_ttl``."""
        for idx in [i for i, ds in self.assigned.items() if ds[0] <= t]:
            kept = [d for d in self.assigned[idx] if d > t]
            self.outstanding -= len(self.assigned[idx]) - len(kept)
            if kept:
                self.assigned[idx] = kept
            else:
                del self.assigned[idx]

    def forget_assignments(self) -> None:
        """It restarted: what it was given died with the old process."""
        self.assigned.clear()
        self.outstanding = 0

    def snapshot(self, t: float) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "state": self.state(t),
                "loadtime": self.loadtime, "error_msg": self.error_msg,
                "last_report_age": round(t - self.last_report, 3), "reports": self.reports,
                "outstanding": self.outstanding, "reported": dict(self.status),
                "finished": dict(self.finished)}


@dataclass(eq=False, slots=True)
class Issued:
    """An assignment as the router sent it, kept until a worker receives it."""

    reqnum: int
    worker: Worker
    answer: dict[str, Any]
    text: str  # canonical(answer)
    required: tuple[str, ...]  # auth_data fields the worker answers 422 without
    at: float


@dataclass(eq=False)
class Endpoint:
    name: str
    config: EndpointConfig
    workers: list[Worker] = field(default_factory=list)
    pending: dict[int, float] = field(default_factory=dict)  # request_idx -> expiry
    issued: dict[str, Issued] = field(default_factory=dict)  # by text, in issue order
    issued_by_reqnum: dict[int, Issued] = field(default_factory=dict)
    spent_reqnums: set[int] = field(default_factory=set)  # assignments a worker received
    spent_texts: set[int] = field(default_factory=set)  # hash(text) of those
    script: deque[dict[str, Any]] = field(default_factory=deque)  # scripted route answers
    pyworkers: dict[int, PyWorker] = field(default_factory=dict)  # by CONTAINER_ID
    next_reqnum: int = 0

    @property
    def real_workers(self) -> bool:
        """Workers are real PyWorkers that report in, not simulated ones."""
        return self.config.workers_from == "pyworker"

    def issue(self, rec: Issued) -> None:
        self.issued[rec.text] = rec
        self.issued_by_reqnum[rec.reqnum] = rec

    def spend(self, rec: Issued) -> None:
        """A worker received it: any later copy is a replay."""
        self.issued.pop(rec.text, None)
        self.issued_by_reqnum.pop(rec.reqnum, None)
        self.spent_reqnums.add(rec.reqnum)
        self.spent_texts.add(hash(rec.text))

    def forget_issued_before(self, t: float) -> None:
        """Drop records of assignments never used since ``t`` (oldest first)."""
        while self.issued:
            rec = next(iter(self.issued.values()))
            if rec.at > t:
                break
            del self.issued[rec.text]
            self.issued_by_reqnum.pop(rec.reqnum, None)

    def counts(self) -> dict[str, int]:
        c = {READY: 0, LOADING: 0, STOPPED: 0}
        if self.real_workers:
            t = now()
            for pw in self.pyworkers.values():
                state = pw.state(t)
                c[state if state in c else STOPPED] += 1
            return c
        for w in self.workers:
            c[w.state] += 1
        return c

    def status_text(self) -> str:
        """Free text, as Vast's: callers must show it, never parse it."""
        c = self.counts()
        extra = ""
        if self.real_workers:
            t = now()
            states = [(pw.state(t), pw.outstanding) for pw in self.pyworkers.values()]
            idle = sum(1 for state, load in states if state == READY and load == 0)
            errored = sum(1 for state, _ in states if state == ERRORED)
            stale = sum(1 for state, _ in states if state == STALE)
            extra = (f", {errored} errored" if errored else "") + (
                f", {stale} not reporting" if stale else "")
        else:
            idle = sum(1 for w in self.workers if w.state == READY and w.outstanding == 0)
        if c[READY] == 0 and c[LOADING] == 0:
            return "Stopped" + extra
        return f"{c[LOADING]} loading, {idle} idle, {c[READY] - idle} busy" + extra

    def pick_worker(self, full_too: bool = False) -> Worker | PyWorker | None:
        """The least loaded ready worker with a free slot (any ready one if ``full_too``)."""
        cap = math.inf if full_too else self.config.capacity
        best: Worker | PyWorker | None = None
        best_load = cap
        if self.real_workers:
            t = now()
            for pw in self.pyworkers.values():
                if pw.outstanding < best_load and pw.state(t) == READY:
                    best, best_load = pw, pw.outstanding
            return best
        for w in self.workers:
            if w.state == READY:
                load = w.outstanding
                if load < best_load:
                    best, best_load = w, load
        return best

    def workers_to_start(self) -> list[Worker]:
        """Stopped workers to cold-start so capacity roughly covers demand."""
        demand = len(self.pending) + sum(w.outstanding for w in self.workers)
        wanted = min(len(self.workers), math.ceil(demand / self.config.capacity))
        active = sum(1 for w in self.workers if w.state != STOPPED)
        stopped = [w for w in self.workers if w.state == STOPPED]
        return stopped[: max(0, wanted - active)]


@dataclass(eq=False)
class Fleet:
    """Everything the router and the workers share."""

    config: EmulatorConfig
    rng: random.Random
    key: SigningKey
    stats: Stats = field(default_factory=Stats)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    last_request_idx: int = 0
    tls: WorkerTLS | None = None  # the root CA, made when first needed

    def worker_tls(self) -> WorkerTLS:
        if self.tls is None:
            self.tls = WorkerTLS()
        return self.tls
