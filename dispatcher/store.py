"""Job state in Redis: every transition is one Lua script, so it is atomic.

The scripts live in ``dispatcher/lua/`` and are readable on their own; this
module only names them and converts arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from dispatcher.jobs import JOB_PREFIX, KEY_PREFIX, Job, job_key, waiting_key

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


def _script(name: str) -> str:
    lua = resources.files("dispatcher") / "lua"
    return (lua / "_common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


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
    outcome: str  # ok | unknown | done | stale | busy
    now: float
    fields: dict[str, str]


class Store:
    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.redis = client
        self.queue = queue
        self.waiting = waiting_key(queue)
        self._create = client.register_script(_script("create"))
        self._claim = client.register_script(_script("claim"))
        self._mark_running = client.register_script(_script("mark_running"))
        self._schedule = client.register_script(_script("schedule"))
        self._finish = client.register_script(_script("finish"))
        self._move_due = client.register_script(_script("move_due"))

    def create(self, job_id: str, fields: dict[str, Any], grace: float) -> bool:
        args = [job_id, grace, *_flatten(fields)]
        return bool(self._create(keys=[job_key(job_id), self.waiting], args=args))

    def claim(self, job_id: str, seq: int, lease: float, token: str) -> Claim:
        raw = self._claim(keys=[job_key(job_id), self.waiting], args=[job_id, seq, lease, token])
        it = iter(raw[2:])
        return Claim(raw[0], float(raw[1]), dict(zip(it, it, strict=True)))

    def mark_running(
        self, job_id: str, token: str, lease: float, fields: dict[str, Any]
    ) -> str | None:
        """Returns the job's payload JSON, or None if it was cancelled or taken over."""
        args = [job_id, token, lease, *_flatten(fields)]
        return self._mark_running(keys=[job_key(job_id), self.waiting], args=args)

    def schedule(self, job_id: str, token: str, delay: float, fields: dict[str, Any]) -> str:
        args = [job_id, token, max(0.0, delay), *_flatten(fields)]
        return self._schedule(keys=[job_key(job_id), self.waiting], args=args)

    def finish(self, job_id: str, status: str, ttl: int, fields: dict[str, Any]) -> str:
        args = [job_id, status, ttl, *_flatten(fields)]
        return self._finish(keys=[job_key(job_id), self.waiting], args=args)

    def move_due(self, limit: int, grace: float, max_backlog: int = 1 << 30
                 ) -> list[tuple[str, int, int]]:
        """Due jobs as (job_id, seq, priority), none while the broker backlog is full."""
        raw = self._move_due(keys=[self.waiting, *broker_lists(self.queue)],
                             args=[limit, grace, JOB_PREFIX, max_backlog])
        return [(raw[i], int(raw[i + 1]), int(raw[i + 2] or 0)) for i in range(0, len(raw), 3)]

    def get(self, job_id: str) -> Job:
        return Job.from_hash(job_id, self.redis.hgetall(job_key(job_id)))

    def counts(self, endpoint: str) -> dict[str, int]:
        """Jobs now queued/waiting/running, and totals that ended each way."""
        raw = self.redis.hgetall(f"{KEY_PREFIX}counts:{endpoint}")
        return {k: int(v) for k, v in raw.items()}

    def waiting_count(self) -> int:
        return self.redis.zcard(self.waiting)
