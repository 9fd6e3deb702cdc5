"""The only API over Redis state: every job transition is one Lua script, so it is atomic.

The scripts live in ``lua/`` (libraries in ``lua/lib/``) and are readable on their own;
``keys.py`` names every key; this module names the scripts and converts arguments.
Nothing here knows about Celery: what must be published comes back as ``Envelope``s.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.client import PubSub
from redis.retry import Retry

from dispatcher.config import RouteBudget, default_webhook_queue
from dispatcher.model import (
    ClaimOutcome,
    Envelope,
    FinishOutcome,
    HookOutcome,
    Job,
    RetryOutcome,
    ScheduleOutcome,
    Task,
)
from dispatcher.store import keys
from dispatcher.store.scripts import source

# Long enough to ride out a Redis restart (AOF reload) without failing a job.
REDIS_RETRIES = 40

Arg = str | int | float  # what a script argument may be

# A blocking call's shortest timeout: Redis reads 0 as "forever".
WAIT_SLICE_MIN = 0.01


def connect(url: str, max_connections: int = 64, retries: int = REDIS_RETRIES,
            timeout: float | None = None) -> redis.Redis:
    """A Redis client that blocks for a free connection and retries through restarts.

    Tools that must answer quickly whether Redis is up or not (metrics) pass few
    ``retries`` and a socket ``timeout``."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        decode_responses=True,
        socket_keepalive=True,
        socket_timeout=timeout,
        socket_connect_timeout=5 if timeout is None else min(5, timeout),
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    return redis.Redis(connection_pool=pool)


def _flatten(fields: dict[str, Any]) -> list[Arg]:
    out: list[Arg] = []
    for k, v in fields.items():
        if v is None:
            v = ""
        elif isinstance(v, float):
            v = repr(v)
        out += [k, str(v)]
    return out


def _pairs(flat: list[Any]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    now: float
    fields: dict[str, str]


@dataclass(frozen=True)
class Finish:
    outcome: FinishOutcome  # "ok", or the status the job already had
    hook: bool  # a webhook delivery was queued: publish its first message
    woken: list[Envelope] = field(default_factory=list)


@dataclass(frozen=True)
class Running:
    payload: str | None
    woken: list[Envelope] = field(default_factory=list)


@dataclass(frozen=True)
class EndpointHealth:
    """The raw figures ``ops.stats`` summarises for one endpoint."""

    counts: dict[str, str]
    gate: dict[str, str]
    calls: list[int]  # route calls in each of the last seconds, oldest first
    waits: list[float]
    runs: list[float]
    oldest_created: float | None  # created_at of the oldest job not on a GPU


def _envelopes(task: Task, raw: list[Any]) -> list[Envelope]:
    return [Envelope(task, raw[i], int(raw[i + 1]), int(raw[i + 2] or 0), raw[i + 3])
            for i in range(0, len(raw), 4)]


def create_call(queue: str, job_id: str, fields: dict[str, Any], grace: float
                ) -> tuple[list[str], list[Arg]]:
    """Keys and arguments of the create script (the sync and asyncio stores share them)."""
    return [keys.JOB(job_id), keys.WAITING(queue)], [job_id, grace, *_flatten(fields)]


def finish_call(queue: str, job_id: str, status: str, ttl: int, fields: dict[str, Any],
                wake: int, grace: float, token: str = "") -> tuple[list[str], list[Arg]]:
    """Keys and arguments of the finish script (the sync and asyncio stores share them).
    ``token``: the writing run's lease token (a stale run writes nothing); "" for cancels."""
    return ([keys.JOB(job_id), keys.WAITING(queue), keys.HOOKS(queue)],
            [job_id, status, ttl, grace, wake, token, *_flatten(fields)])


def parse_finish(raw: list[Any]) -> Finish:
    return Finish(raw[0], bool(int(raw[1])), _envelopes("dispatch", raw[2:]))


# The job hash's fields a Job shows: everything but the payload (up to megabytes,
# needed only by the worker that forwards it).
VIEW_FIELDS = (*(f.name for f in dataclasses.fields(Job) if f.name != "id"), "result_type")


def view_from(job_id: str, values: list[str | None]) -> Job:
    """The Job of an HMGET of ``VIEW_FIELDS``; unknown when the hash is gone."""
    h = {k: v for k, v in zip(VIEW_FIELDS, values, strict=True) if v is not None}
    return Job.from_hash(job_id, h)


# What a listing shows of a job (``list_jobs``): no payload, no result.
LIST_FIELDS = ("status", "endpoint", "error", "error_kind", "created_at", "assigned_at",
               "finished_at", "attempts", "reroutes", "priority", "worker_status", "retries",
               "last_error_kind")


@dataclass(frozen=True)
class Rerun:
    outcome: RetryOutcome  # "ok": queued again, publish ``envelope``
    envelope: Envelope | None = None


def parse_retry(job_id: str, raw: list[Any]) -> Rerun:
    if raw[0] != "ok":
        return Rerun(raw[0])
    return Rerun("ok", Envelope("dispatch", job_id, int(raw[1]), int(raw[2] or 0), raw[3]))


def retry_call(queue: str, job_id: str, grace: float, force: bool
               ) -> tuple[list[str], list[Arg]]:
    """Keys and arguments of the retry script (the sync and asyncio stores share them)."""
    return [keys.JOB(job_id), keys.WAITING(queue)], [job_id, grace, int(force), queue]


def hook_envelope(job_id: str, priority: int = 0, endpoint: str = "") -> Envelope:
    """The first message of a webhook delivery ``finish`` queued."""
    return Envelope("webhook", job_id, keys.FIRST_WEBHOOK_SEQ, priority, endpoint)


class Store:
    """One queue's view of Redis: job transitions, due work, and the fleet's gates."""

    def __init__(self, client: redis.Redis, queue: str, budget: RouteBudget | None = None,
                 rng: random.Random | None = None, hook_queue: str | None = None) -> None:
        self.redis = client
        self.queue = queue
        # The Celery queue webhook deliveries are published to (their own workers).
        self.hook_queue = hook_queue or default_webhook_queue(queue)
        self.budget = budget or RouteBudget()
        self.waiting = keys.WAITING(queue)
        self.hooks = keys.HOOKS(queue)
        self._rng = rng or random.Random()
        reg = client.register_script
        self._create = reg(source("create"))
        self._claim = reg(source("claim"))
        self._mark_running = reg(source("mark_running"))
        self._schedule = reg(source("schedule"))
        self._finish = reg(source("finish"))
        self._move_due = reg(source("move_due"))
        self._record_route_answer = reg(source("record_route_answer"))
        self._hook_take = reg(source("hook_take"))
        self._hook_done = reg(source("hook_done"))
        self._cancel_pending = reg(source("cancel_pending"))
        self._gate_state = reg(source("gate_state"))
        self._renew = reg(source("renew"))
        self._forget_endpoints = reg(source("forget_endpoints"))
        self._retry = reg(source("retry"))
        self._cancel_running = reg(source("cancel_running"))
        self._stream_reset = reg(source("stream_reset"))

    # --- the job's transitions ---------------------------------------------------------

    def create(self, job_id: str, fields: dict[str, Any], grace: float) -> bool:
        """False if the id exists: a repeated submit is the same job."""
        k, args = create_call(self.queue, job_id, fields, grace)
        return bool(self._create(keys=k, args=args))

    def create_many(self, jobs: list[tuple[str, dict[str, Any]]], grace: float) -> list[bool]:
        """``create`` for many jobs in one pipelined round trip; True where new."""
        calls = [create_call(self.queue, job_id, fields, grace) for job_id, fields in jobs]
        return [bool(r) for r in self._eval_many(self._create, calls)]

    def _eval_many(self, script: Any, calls: list[tuple[list[str], list[Arg]]]) -> list[Any]:
        """One script run per call, in one pipelined round trip."""
        p = self.redis.pipeline(transaction=False)
        for k, args in calls:
            p.evalsha(script.sha, len(k), *k, *args)
        raw = p.execute(raise_on_error=False)
        for i, r in enumerate(raw):
            if isinstance(r, redis.exceptions.NoScriptError):
                # Redis restarted or flushed its scripts: that one did not run
                raw[i] = script(keys=calls[i][0], args=calls[i][1])
        for r in raw:
            if isinstance(r, Exception):
                raise r
        return raw

    def retry(self, job_id: str, grace: float, force: bool = False) -> Rerun:
        """Queue an ended job again (``retry.lua``); publish the envelope if "ok"."""
        return self.retry_many([job_id], grace, force)[0]

    def retry_many(self, job_ids: list[str], grace: float, force: bool = False
                   ) -> list[Rerun]:
        """``retry`` for many jobs in one pipelined round trip, in order."""
        calls = [retry_call(self.queue, job_id, grace, force) for job_id in job_ids]
        raw = self._eval_many(self._retry, calls)
        return [parse_retry(job_id, r) for job_id, r in zip(job_ids, raw, strict=True)]

    def claim(self, job_id: str, seq: int, lease: float, token: str, poll_cap: float = 5.0
              ) -> Claim:
        """Lease the job and take a route call from its endpoint's budget, or defer it."""
        b = self.budget
        args: list[Arg] = [job_id, seq, lease, token, b.rate, b.burst, b.recover,
                self._rng.uniform(0.5, 1.5), poll_cap]
        raw = self._claim(keys=[keys.JOB(job_id), self.waiting], args=args)
        return Claim(raw[0], float(raw[1]), _pairs(raw[2:]))

    def mark_running(self, job_id: str, token: str, lease: float, fields: dict[str, Any],
                     wake: int = 1, grace: float = 15.0) -> Running | None:
        """The payload to forward (None if the job was cancelled or taken over)."""
        args: list[Arg] = [job_id, token, lease, wake, grace, *_flatten(fields)]
        raw = self._mark_running(keys=[keys.JOB(job_id), self.waiting], args=args)
        if not raw:
            return None
        return Running(raw[0], _envelopes("dispatch", raw[1:]))

    def schedule(self, job_id: str, token: str, delay: float, fields: dict[str, Any]
                 ) -> ScheduleOutcome:
        """Put the job back to wait (never past its deadline; spread by the budget)."""
        b = self.budget
        args: list[Arg] = [job_id, token, max(0.0, delay), b.rate, self._rng.uniform(0.5, 1.5),
                b.recover, *_flatten(fields)]
        return cast(ScheduleOutcome,
                    self._schedule(keys=[keys.JOB(job_id), self.waiting], args=args))

    def finish(self, job_id: str, status: str, ttl: int, fields: dict[str, Any],
               wake: int = 0, grace: float = 15.0, token: str = "") -> Finish:
        """The terminal write (the first one wins); ``wake`` waiting jobs get the slot.
        A run passes its lease ``token``: if another run took the job over, "lost"."""
        k, args = finish_call(self.queue, job_id, status, ttl, fields, wake, grace, token)
        return parse_finish(self._finish(keys=k, args=args))

    def stream_append(self, job_id: str, pieces: list[str], maxlen: int, ttl: float) -> None:
        """Append a streaming job's pieces, one round trip per batch. The stream lives
        ``ttl`` seconds unless its job's end sets the job's own expiry."""
        k = keys.STREAM(job_id)
        p = self.redis.pipeline(transaction=False)
        for piece in pieces:
            p.xadd(k, {"data": piece}, maxlen=maxlen, approximate=True)
        p.expire(k, int(ttl) + 1)
        p.execute()

    def read_stream(self, job_id: str, after: str, block: float,
                    client: redis.Redis | None = None, count: int = 1000
                    ) -> list[tuple[str, dict[str, str]]]:
        """Entries of a job's stream after ``after``, blocking up to ``block`` seconds for
        the first; ``client``: a pool for blocking calls."""
        r = client or self.redis
        got = cast(list[Any], r.xread({keys.STREAM(job_id): after}, count=count,
                                      block=max(1, int(block * 1000))))
        return cast(list[tuple[str, dict[str, str]]], got[0][1] if got else [])

    def stream_reset(self, job_id: str, token: str) -> bool:
        """Drop a streaming job's pieces before it is re-run (its readers then follow the
        new run), if the run holding lease ``token`` still holds it."""
        return bool(self._stream_reset(keys=[keys.JOB(job_id), keys.STREAM(job_id)],
                                       args=[token]))

    def renew(self, leases: list[tuple[str, str]], lease: float) -> dict[str, str]:
        """Renew (job id, lease token) leases for ``lease`` seconds; returns the jobs
        whose lease is gone, with their status (the holder cuts their GPU call)."""
        if not leases:
            return {}
        args: list[Arg] = [lease]
        for job_id, token in leases:
            args += [job_id, token]
        return _pairs(self._renew(keys=[self.waiting], args=args))

    def eviction_policy(self) -> str | None:
        """Redis' maxmemory-policy (None if CONFIG is not allowed, as on some hosts)."""
        try:
            got = cast(dict[str, str], self.redis.config_get("maxmemory-policy"))
        except redis.ResponseError:
            return None
        return got.get("maxmemory-policy")

    def cancel_pending(self, endpoint: str, ttl: int, grace: float, error: str, kind: str,
                       limit: int = 500) -> tuple[int, int, list[str]]:
        """Cancel up to ``limit`` queued/waiting jobs: (cancelled, scanned, ids with a hook)."""
        raw = self._cancel_pending(
            keys=[keys.PENDING_INDEX(self.queue, endpoint), self.waiting, self.hooks],
            args=[limit, ttl, grace, error, kind])
        return int(raw[0]), int(raw[1]), list(raw[2:])

    def cancel_running(self, endpoint: str, ttl: int, grace: float, error: str, kind: str,
                       limit: int = 500) -> tuple[int, int, list[str]]:
        """Cancel up to ``limit`` jobs on a GPU (their holders cut the calls): (cancelled,
        scanned, ids with a hook)."""
        raw = self._cancel_running(
            keys=[keys.JOB_INDEX(endpoint, "running"), self.waiting, self.hooks],
            args=[limit, ttl, grace, error, kind])
        return int(raw[0]), int(raw[1]), list(raw[2:])

    # --- due work and webhooks ---------------------------------------------------------

    def move_due(self, limit: int, grace: float, max_backlog: int = 1 << 30,
                 hooks: bool = False) -> list[Envelope]:
        """Due jobs (or webhook deliveries), none while the broker backlog is full: the
        backlog of the queue they go to (deliveries have their own)."""
        task: Task = "webhook" if hooks else "dispatch"
        zset = self.hooks if hooks else self.waiting
        queue = self.hook_queue if hooks else self.queue
        args: list[Arg] = [limit, grace, max_backlog, "webhook_seq" if hooks else "seq"]
        raw = self._move_due(keys=[zset, *keys.broker_lists(queue)], args=args)
        return _envelopes(task, raw)

    def hook_take(self, job_id: str, seq: int, lease: float, max_attempts: int
                  ) -> tuple[HookOutcome, int, dict[str, str]]:
        """Take one attempt; once ``max_attempts`` were taken the delivery ends failed
        ("done", with ``webhook_status`` failed in the fields)."""
        raw = self._hook_take(keys=[keys.JOB(job_id), self.hooks],
                              args=[job_id, seq, lease, max_attempts])
        if raw[0] != "ok":
            return raw[0], 0, ({"webhook_status": raw[1]} if len(raw) > 1 else {})
        return "ok", int(raw[1]), _pairs(raw[2:])

    def hooks_waiting(self) -> int:
        """Deliveries not over yet (pending, retrying or in an attempt)."""
        return int(self.redis.zcard(self.hooks))

    def hook_done(self, job_id: str, seq: int, outcome: str, retry_delay: float,
                  max_attempts: int, detail: str, http_status: int | None) -> str:
        args: list[Arg] = [job_id, seq, outcome, retry_delay, max_attempts, detail[:500],
                "" if http_status is None else http_status]
        return cast(str, self._hook_done(keys=[keys.JOB(job_id), self.hooks], args=args))

    # --- the fleet's route budget ------------------------------------------------------

    def record_route_answer(self, endpoint: str, status_text: str, rate_limited: bool) -> int:
        """Record what /route/ answered, for stats. A 429 that is a real share of the
        fleet's calls CUTS THE WHOLE FLEET'S route rate and pauses it; returns the
        backoff level (0: no cut)."""
        b = self.budget
        args: list[Arg] = [status_text[:200], int(rate_limited), b.recover, b.pause_base,
                           b.pause_cap, endpoint, b.rate]
        return int(self._record_route_answer(keys=[keys.GATE(endpoint)], args=args) or 0)

    def gate_state(self, endpoint: str) -> tuple[int, float]:
        """The endpoint's backoff level and route rate in force (0.0 = no limit)."""
        b = self.budget
        level, rate = self._gate_state(keys=[keys.GATE(endpoint)], args=[b.rate, b.recover])
        return int(level), float(rate)

    # --- reads -------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        return Job.from_hash(job_id, cast(dict[str, str], self.redis.hgetall(keys.JOB(job_id))))

    def view(self, job_id: str) -> Job:
        """The job as an app sees it, without reading its payload."""
        return view_from(job_id, cast(list[str | None],
                                      self.redis.hmget(keys.JOB(job_id), VIEW_FIELDS)))

    def subscribe(self, job_id: str, client: redis.Redis | None = None) -> PubSub:
        """A subscription to the job's status changes (lib/notify.lua publishes them);
        it holds a connection of ``client``'s pool until closed."""
        r = client or self.redis
        sub: PubSub = r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        sub.subscribe(keys.EVENTS(job_id))
        return sub

    def wait_end(self, job_id: str, timeout: float, client: redis.Redis | None = None
                 ) -> str | None:
        """Block until the job's end notice (lib/notify.lua) or ``timeout``; the end
        status, or None. One command, answered at once if the job ended within
        ``NOTIFY_TTL``. ``client``: a pool for blocking calls, so waiters never take
        the connections submits need."""
        r = client or self.redis
        k = keys.DONE(job_id)
        block = round(max(WAIT_SLICE_MIN, timeout), 3)
        # redis-py types the timeout int; Redis takes decimal seconds.
        return cast(str | None, r.blmove(k, k, block, "LEFT", "LEFT"))  # type: ignore[arg-type]

    def list_jobs(self, endpoints: Iterable[str], statuses: Iterable[str],
                  limit: int | None = 50, since: float | None = None,
                  kinds: Collection[str] | None = None, page: int = 500) -> list[Job]:
        """Jobs of ``endpoints`` now in one of ``statuses``, the latest to enter it first,
        from the job index (no scan): ``since`` (Redis time) keeps those that entered it
        since then, ``kinds`` those with one of these error kinds; ``limit`` None: all.
        Each index is read a page at a time and merged; only the jobs shown are read."""
        wanted = set(statuses)
        index = [keys.JOB_INDEX(ep, st) for ep in endpoints for st in wanted]
        low = "-inf" if since is None else f"{since:.6f}"
        size = page if limit is None or kinds else max(1, min(page, limit + 8))
        bufs: dict[str, deque[tuple[str, float]]] = {k: deque() for k in index}
        offsets = dict.fromkeys(index, 0)
        more = dict.fromkeys(index, True)

        def load(ks: list[str]) -> None:
            p = self.redis.pipeline(transaction=False)
            for k in ks:
                p.zrevrangebyscore(k, "+inf", low, start=offsets[k], num=size, withscores=True)
            for k, got in zip(ks, p.execute(), strict=True):
                offsets[k] += len(got)
                bufs[k].extend(got)
                more[k] = len(got) == size

        load(index)
        heap = [(-bufs[k][0][1], k) for k in index if bufs[k]]
        heapq.heapify(heap)
        out: list[Job] = []
        seen: set[str] = set()
        while heap and (limit is None or len(out) < limit):
            batch: list[str] = []
            n = size if limit is None or kinds else limit - len(out)
            while heap and len(batch) < n:
                _, k = heapq.heappop(heap)
                job_id, _score = bufs[k].popleft()
                if not bufs[k] and more[k]:
                    load([k])
                if bufs[k]:
                    heapq.heappush(heap, (-bufs[k][0][1], k))
                if job_id not in seen:
                    seen.add(job_id)
                    batch.append(job_id)
            p = self.redis.pipeline(transaction=False)
            for job_id in batch:
                p.hmget(keys.JOB(job_id), LIST_FIELDS)
            for job_id, values in zip(batch, p.execute(), strict=True):
                h = {f: v for f, v in zip(LIST_FIELDS, values, strict=True) if v is not None}
                # Gone (expired before the index was trimmed), or moved on since it was read.
                if h.get("status") not in wanted or (kinds and h.get("error_kind") not in kinds):
                    continue
                out.append(Job.from_hash(job_id, h))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def counts(self, endpoint: str) -> dict[str, int]:
        """Jobs now queued/waiting/running, and totals that ended each way."""
        raw = cast(dict[str, str], self.redis.hgetall(keys.COUNTS(endpoint)))
        return {k: int(v) for k, v in raw.items()}

    def waiting_count(self) -> int:
        return int(self.redis.zcard(self.waiting))

    def endpoints(self) -> list[str]:
        k = keys.ENDPOINTS()
        if self.redis.type(k) == "set":  # an earlier version's plain set
            return sorted(cast(set[str], self.redis.smembers(k)))
        return sorted(cast(list[str], self.redis.zrange(k, 0, -1)))

    def forget_idle_endpoints(self, idle: float, limit: int = 100) -> list[str]:
        """Drop the keys of endpoints with no job created or ended for ``idle`` seconds
        and none live; returns their names."""
        return cast(list[str], self._forget_endpoints(keys=[keys.ENDPOINTS()],
                                                      args=[idle, self.queue, limit]))

    def now(self) -> float:
        sec, usec = self.redis.time()
        return sec + usec / 1e6

    def endpoint_health(self, endpoint: str, now: float, window: int) -> EndpointHealth:
        """One pipelined read of an endpoint's counters, gate, samples and oldest job."""
        pending = keys.PENDING_INDEX(self.queue, endpoint)
        sec = int(now)
        p = self.redis.pipeline(transaction=False)
        p.hgetall(keys.COUNTS(endpoint))
        p.hgetall(keys.GATE(endpoint))
        p.mget([keys.CALLS(endpoint, s) for s in range(sec - window, sec)])
        p.lrange(keys.SAMPLES(endpoint), 0, -1)
        for priority in range(keys.MAX_PRIORITY + 1):  # the oldest job of each priority
            low, high = keys.pending_band(priority)
            p.zrangebyscore(pending, low, high, start=0, num=1, withscores=True)
        counts, gate, calls, samples, *oldest = p.execute()
        pairs = [s.split() for s in samples]
        created = [keys.decode_pending(score)[1] for hit in oldest for _, score in hit]
        return EndpointHealth(
            counts=counts, gate=gate, calls=[int(c or 0) for c in calls],
            waits=[float(w) for w, _ in pairs], runs=[float(r) for _, r in pairs],
            oldest_created=min(created) if created else None)
