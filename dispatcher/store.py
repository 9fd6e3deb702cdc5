"""Job state in Redis: every transition is one Lua script, so it is atomic.

The scripts live in ``dispatcher/lua/`` and are readable on their own; this
module only names them and converts arguments.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from dispatcher.jobs import JOB_PREFIX, KEY_PREFIX, Job, job_key, waiting_key
from dispatcher.settings import RouteBudget

# kombu's Redis priority queues: "<queue>" for step 0, "<queue>:<n>" for the others.
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"

# Long enough to ride out a Redis restart (AOF reload) without failing a job.
REDIS_RETRIES = 40


def connect(url: str, max_connections: int = 64) -> redis.Redis:
    """A Redis client that blocks for a free connection and retries through restarts."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        decode_responses=True,
        socket_keepalive=True,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return redis.Redis(connection_pool=pool)


def broker_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for one queue, one per priority (see celery_app)."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{n}" for n in PRIORITY_STEPS[1:]]


def _script(name: str, gate: bool = False) -> str:
    lua = resources.files("dispatcher") / "lua"
    parts = ["_common", "_gate", name] if gate else ["_common", name]
    return "\n".join((lua / f"{part}.lua").read_text() for part in parts)


def _flatten(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        if v is None:
            v = ""
        elif isinstance(v, float):
            v = repr(v)
        out += [k, str(v)]
    return out


@dataclass(frozen=True)
class Claim:
    outcome: str  # ok | deferred | unknown | done | stale | busy
    now: float
    fields: dict[str, str]


@dataclass(frozen=True)
class Due:
    """A job (or webhook delivery) handed over for publishing."""

    id: str
    seq: int
    priority: int
    endpoint: str


@dataclass(frozen=True)
class Finish:
    outcome: str  # ok, or the status the job already had (first terminal write wins)
    hook: bool  # a webhook delivery was queued: publish it
    woken: list[Due] = field(default_factory=list)


@dataclass(frozen=True)
class Running:
    payload: str | None
    woken: list[Due] = field(default_factory=list)


def _dues(raw: list[Any]) -> list[Due]:
    return [Due(raw[i], int(raw[i + 1]), int(raw[i + 2] or 0), raw[i + 3])
            for i in range(0, len(raw), 4)]


def gate_key(endpoint: str) -> str:
    return f"{KEY_PREFIX}gate:{endpoint}"


def pending_key(queue: str, endpoint: str) -> str:
    """Jobs of an endpoint not on a GPU yet, most urgent first (see lua/_common.lua)."""
    return f"{KEY_PREFIX}pending:{queue}:{endpoint}"


def hooks_key(queue: str) -> str:
    """Webhook deliveries due for an attempt, scored by due time."""
    return f"{KEY_PREFIX}hooks:{queue}"


class Store:
    def __init__(self, client: redis.Redis, queue: str, budget: RouteBudget | None = None,
                 rng: random.Random | None = None) -> None:
        self.redis = client
        self.queue = queue
        self.budget = budget or RouteBudget()
        self.waiting = waiting_key(queue)
        self.hooks = hooks_key(queue)
        self._rng = rng or random.Random()
        reg = client.register_script
        self._create = reg(_script("create"))
        self._claim = reg(_script("claim", gate=True))
        self._mark_running = reg(_script("mark_running"))
        self._schedule = reg(_script("schedule", gate=True))
        self._finish = reg(_script("finish"))
        self._move_due = reg(_script("move_due"))
        self._route_result = reg(_script("route_result", gate=True))
        self._hook_take = reg(_script("hook_take"))
        self._hook_done = reg(_script("hook_done"))
        self._cancel_pending = reg(_script("cancel_pending"))
        self._gate_state = reg(_script("gate_state", gate=True))

    def create(self, job_id: str, fields: dict[str, Any], grace: float) -> bool:
        args = [job_id, grace, *_flatten(fields)]
        return bool(self._create(keys=[job_key(job_id), self.waiting], args=args))

    def claim(self, job_id: str, seq: int, lease: float, token: str, poll_cap: float = 5.0
              ) -> Claim:
        """Lease the job and take a route call from its endpoint's budget, or defer it."""
        b = self.budget
        args = [job_id, seq, lease, token, b.rate, b.burst, b.recover,
                self._rng.uniform(0.5, 1.5), poll_cap]
        raw = self._claim(keys=[job_key(job_id), self.waiting], args=args)
        it = iter(raw[2:])
        return Claim(raw[0], float(raw[1]), dict(zip(it, it, strict=True)))

    def mark_running(self, job_id: str, token: str, lease: float, fields: dict[str, Any],
                     wake: int = 1, grace: float = 15.0) -> Running | None:
        """The payload to forward (None if the job was cancelled or taken over)."""
        args = [job_id, token, lease, wake, grace, *_flatten(fields)]
        raw = self._mark_running(keys=[job_key(job_id), self.waiting], args=args)
        if not raw:
            return None
        return Running(raw[0], _dues(raw[1:]))

    def schedule(self, job_id: str, token: str, delay: float, fields: dict[str, Any]) -> str:
        b = self.budget
        args = [job_id, token, max(0.0, delay), b.rate, self._rng.uniform(0.5, 1.5),
                b.recover, *_flatten(fields)]
        return self._schedule(keys=[job_key(job_id), self.waiting], args=args)

    def finish(self, job_id: str, status: str, ttl: int, fields: dict[str, Any],
               wake: int = 0, grace: float = 15.0) -> Finish:
        args = [job_id, status, ttl, grace, wake, *_flatten(fields)]
        raw = self._finish(keys=[job_key(job_id), self.waiting, self.hooks], args=args)
        return Finish(raw[0], bool(int(raw[1])), _dues(raw[2:]))

    def move_due(self, limit: int, grace: float, max_backlog: int = 1 << 30,
                 hooks: bool = False) -> list[Due]:
        """Due jobs (or webhook deliveries), none while the broker backlog is full."""
        keys = [self.hooks if hooks else self.waiting, *broker_lists(self.queue)]
        args = [limit, grace, JOB_PREFIX, max_backlog, "webhook_seq" if hooks else "seq"]
        return _dues(self._move_due(keys=keys, args=args))

    def route_result(self, endpoint: str, status_text: str, rate_limited: bool) -> int:
        """Record a /route/ answer; a 429 backs the fleet off. Returns the new level."""
        b = self.budget
        args = [status_text[:200], int(rate_limited), b.recover, b.pause_base, b.pause_cap,
                endpoint, b.rate]
        return int(self._route_result(keys=[gate_key(endpoint)], args=args) or 0)

    def gate_state(self, endpoint: str) -> tuple[int, float]:
        """The endpoint's backoff level and route rate in force (0.0 = no limit)."""
        b = self.budget
        level, rate = self._gate_state(keys=[gate_key(endpoint)], args=[b.rate, b.recover])
        return int(level), float(rate)

    def hook_take(self, job_id: str, seq: int, lease: float) -> tuple[str, int, dict[str, str]]:
        raw = self._hook_take(keys=[job_key(job_id), self.hooks], args=[job_id, seq, lease])
        if raw[0] != "ok":
            return raw[0], 0, {}
        it = iter(raw[2:])
        return "ok", int(raw[1]), dict(zip(it, it, strict=True))

    def hook_done(self, job_id: str, seq: int, outcome: str, retry_delay: float,
                  max_attempts: int, detail: str, http_status: int | None) -> str:
        args = [job_id, seq, outcome, retry_delay, max_attempts, detail[:500],
                "" if http_status is None else http_status]
        return self._hook_done(keys=[job_key(job_id), self.hooks], args=args)

    def cancel_pending(self, endpoint: str, ttl: int, grace: float, limit: int = 500
                       ) -> tuple[int, int, list[str]]:
        """Cancel up to ``limit`` queued/waiting jobs: (cancelled, scanned, ids with a hook)."""
        raw = self._cancel_pending(
            keys=[pending_key(self.queue, endpoint), self.waiting, self.hooks],
            args=[limit, ttl, grace, JOB_PREFIX])
        return int(raw[0]), int(raw[1]), list(raw[2:])

    def get(self, job_id: str) -> Job:
        return Job.from_hash(job_id, self.redis.hgetall(job_key(job_id)))

    def counts(self, endpoint: str) -> dict[str, int]:
        """Jobs now queued/waiting/running, and totals that ended each way."""
        raw = self.redis.hgetall(f"{KEY_PREFIX}counts:{endpoint}")
        return {k: int(v) for k, v in raw.items()}

    def waiting_count(self) -> int:
        return self.redis.zcard(self.waiting)
