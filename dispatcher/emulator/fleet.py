"""The emulated GPU fleet: endpoints, their workers, cold starts and scale to zero.

Everything here runs on the emulator's one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dispatcher.emulator.config import EndpointConfig

STOPPED, LOADING, READY = "stopped", "loading", "ready"


def payload_id(payload: Any) -> str:
    if isinstance(payload, dict) and "id" in payload:
        return str(payload["id"])
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


@dataclass
class Worker:
    endpoint: str
    index: int
    host: str
    hang: bool = False
    port: int = 0
    state: str = STOPPED
    ready_at: float = 0.0
    last_active: float = 0.0
    outstanding: int = 0  # assigned-not-arrived + queued + running
    queued: int = 0  # waiting for a slot
    running: int = 0
    warmup_left: int = 0
    starting: bool = False
    expected: dict[int, float] = field(default_factory=dict)  # reqnum -> assignment deadline
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None
    sem: asyncio.Semaphore | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class Endpoint:
    name: str
    config: EndpointConfig
    workers: list[Worker] = field(default_factory=list)
    pending: dict[int, float] = field(default_factory=dict)  # request_idx -> last poll
    used_reqnums: set[int] = field(default_factory=set)
    next_reqnum: int = 0

    def counts(self) -> dict[str, int]:
        c = {STOPPED: 0, LOADING: 0, READY: 0}
        for w in self.workers:
            c[w.state] += 1
        return c

    def status_text(self) -> str:
        c = self.counts()
        if c[READY] == 0 and c[LOADING] == 0:
            return "Stopped"
        idle = sum(1 for w in self.workers if w.state == READY and w.outstanding == 0)
        return f"{c[LOADING]} loading, {idle} idle, {c[READY] - idle} busy"

    def capacity(self) -> int:
        return self.config.concurrency * self.config.queue_depth

    def pick_worker(self) -> Worker | None:
        free = [w for w in self.workers if w.state == READY and w.outstanding < self.capacity()]
        return min(free, key=lambda w: w.outstanding) if free else None

    def wanted_workers(self) -> int:
        demand = len(self.pending) + sum(w.outstanding for w in self.workers)
        return min(self.config.max_workers, math.ceil(demand / self.capacity()))


def draw_latency(cfg: EndpointConfig, rng: random.Random) -> float:
    lat = cfg.latency
    if lat["kind"] == "fixed":
        return float(lat.get("seconds", 0.05))
    if lat["kind"] == "uniform":
        return rng.uniform(float(lat["low"]), float(lat["high"]))
    return float(lat["median"]) * math.exp(rng.gauss(0.0, float(lat.get("sigma", 0.5))))


def now() -> float:
    return time.monotonic()
