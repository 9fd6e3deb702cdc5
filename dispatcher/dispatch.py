"""One dispatch run of a job: claim -> route -> forward -> store.

A run never sleeps waiting for a GPU. When Vast has no worker for the job, the
run puts the job back in Redis' waiting set with a due time and returns, so a
worker thread is busy only while a route call or a GPU call is in flight.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from typing import Any

import redis

from dispatcher.config import Settings
from dispatcher.errors import (
    InvalidJob,
    RouteAuthError,
    RouteBadAnswer,
    RouteError,
    RouteRateLimited,
    RouteRejected,
    VastError,
    WorkerAborted,
    WorkerBadAnswer,
    WorkerRejected,
    WorkerStreamBroken,
    WorkerTimeout,
    WorkerTLSError,
    WorkerUnavailable,
)
from dispatcher.model import RunOutcome, Status
from dispatcher.net import WATCHDOG
from dispatcher.runtime import Runtime
from dispatcher.store import hook_envelope
from dispatcher.validation import check_job
from dispatcher.vast import Assignment

log = logging.getLogger("dispatcher.dispatch")

# Slack over the HTTP timeouts before a silent holder's lease is taken over.
LEASE_SLACK = 10.0


def poll_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before poll number ``attempt`` (0-based): exponential, capped, jittered.

    "Equal jitter": half the step is fixed so a job is never re-polled at once
    (no busy loop), half is random so a fleet of waiting jobs spreads out.
    """
    step = min(cap, base * 2.0 ** min(attempt, 30))
    r = (rng or random).random()
    return step / 2 + r * step / 2


class Run:
    """State of one run over a claimed job; counters are written back at the end."""

    def __init__(self, rt: Runtime, job_id: str, token: str, fields: dict[str, str], now: float):
        self.rt = rt
        self.id = job_id
        self.token = token
        self.f = fields
        self.now = now
        self.route_calls = int(fields.get("route_calls") or 0)
        self.worker_attempts = int(fields.get("worker_attempts") or 0)
        self.reroutes = int(fields.get("reroutes") or 0)
        self.polls = int(fields.get("polls") or 0)
        self.gpu_called = False

    def counters(self) -> dict[str, Any]:
        return {
            "route_calls": self.route_calls,
            "worker_attempts": self.worker_attempts,
            "reroutes": self.reroutes,
            "polls": self.polls,
        }

    def finish(self, status: str, error: str | None = None, kind: str | None = None,
               **fields: Any) -> RunOutcome:
        if error:
            fields.update(error=error, error_kind=kind or status)
        s = self.rt.settings
        # A success frees a GPU slot: wake the endpoint's most urgent waiting job.
        done = self.rt.store.finish(self.id, status, s.result_ttl, {**self.counters(), **fields},
                                    wake=1 if status == Status.SUCCEEDED else 0,
                                    grace=s.publish_grace, token=self.token)
        self.rt.publish(done.woken)
        if done.hook:
            self.rt.publish([hook_envelope(self.id, int(self.f.get("priority") or 0),
                                           self.f.get("endpoint") or "")])
        outcome = done.outcome
        if outcome == "ok":
            if error:
                log.info("job %s %s (%s): %s", self.id, status, kind, error)
            else:  # the hot path: one line per job only when asked for (DEBUG)
                log.debug("job %s %s", self.id, status)
            return status
        log.info("job %s: %s not stored, job already %s", self.id, status, outcome)
        return outcome

    def wait(self, reason: str, delay: float, **fields: Any) -> RunOutcome:
        # The store never schedules past the job's deadline: it expires on time.
        outcome = self.rt.store.schedule(
            self.id, self.token, delay, {**self.counters(), "wait_reason": reason, **fields}
        )
        log.debug("job %s waits %.2fs: %s (%s)", self.id, delay, reason, outcome)
        return "waiting" if outcome == "ok" else outcome


def run_job(rt: Runtime, job_id: str, seq: int) -> RunOutcome:
    """Advance a job by one step. Returns what happened, for logs and tests."""
    s = rt.settings
    token = uuid.uuid4().hex
    claim = rt.store.claim(job_id, seq, s.route_timeout + LEASE_SLACK, token, s.poll_cap)
    if claim.outcome != "ok":
        log.debug("job %s seq %s: %s", job_id, seq, claim.outcome)
        return claim.outcome
    run = Run(rt, job_id, token, claim.fields, claim.now)
    try:
        return _advance(run)
    except VastError as e:  # a class we did not map: fail clearly rather than loop
        return run.finish(Status.FAILED, str(e), type(e).__name__)
    except (redis.ConnectionError, redis.TimeoutError):
        raise  # Redis is away: the job's lease ends and any worker takes it up again
    except Exception as e:
        # A bug of ours. Never a silent re-run (the GPU may have done the work): the
        # job ends, saying what happened; the traceback goes to the log.
        log.exception("job %s: unexpected %s", job_id, type(e).__name__)
        where = "after its GPU call started" if run.gpu_called else "before any GPU call"
        return run.finish(Status.FAILED, f"internal error {where}: {type(e).__name__}: "
                                         f"{str(e)[:300]}", "internal_error")


def _advance(run: Run) -> RunOutcome:
    rt, f, s = run.rt, run.f, run.rt.settings
    try:
        spec = check_job(
            s,
            f.get("endpoint"),
            None,
            check_payload=False,  # checked at submit; read only once a GPU is assigned
            cost=_number(f, "cost"),
            path=f.get("path"),
            max_wait=_number(f, "max_wait"),
            timeout=_number(f, "timeout"),
            priority=int(_number(f, "priority") or 0),
        )
    except (InvalidJob, ValueError) as e:
        return run.finish(Status.FAILED, f"invalid job: {e}", "invalid_input")

    deadline = float(f["created_at"]) + spec.max_wait
    if run.now >= deadline:
        last = f.get("wait_reason") or "never routed"
        return run.finish(
            Status.EXPIRED,
            f"no worker within max_wait={spec.max_wait:g}s; last route status: {last}",
            "expired",
        )

    # 1. Route: ask Vast for a GPU worker.
    request_idx = int(f["request_idx"]) if f.get("request_idx") else None
    run.route_calls += 1
    try:
        answer = rt.vast.route(spec.endpoint, spec.cost, request_idx)
    except (RouteAuthError, RouteRejected, RouteBadAnswer) as e:
        rt.record_route_answer(spec.endpoint, f"{e.status}: {e.text or e}"[:200])
        return run.finish(Status.FAILED, str(e), _kind(e))
    except RouteError as e:  # 429, 5xx, connection trouble: a delay, not a failure
        limited = isinstance(e, RouteRateLimited)
        rt.record_route_answer(spec.endpoint, f"HTTP {e.status}" if e.status else type(e).__name__,
                        rate_limited=limited)
        run.polls += 1
        return run.wait(str(e), _poll_delay(run, s))

    if not isinstance(answer, Assignment):
        rt.record_route_answer(spec.endpoint, f"no worker: {answer.status}")
        run.polls += 1
        idx = answer.request_idx if answer.request_idx is not None else request_idx
        return run.wait(
            f"no worker available: {answer.status}", _poll_delay(run, s),
            request_idx=idx if idx is not None else "",
        )

    # 2. Forward: the assignment is for this job and this attempt only.
    run.worker_attempts += 1
    run.polls = 0
    rt.record_route_answer(spec.endpoint, "assigned")
    # Renewed every second while the call is open (Runtime.inflight): a job whose worker
    # died runs again after DISPATCHER_LEASE, not after its whole timeout.
    running = rt.store.mark_running(
        run.id, run.token, s.lease,
        {"worker_url": answer.url, **run.counters(),
         # Absent from the published schema: keep the one we had, if any.
         "request_idx": answer.request_idx if answer.request_idx is not None else request_idx},
        wake=1, grace=s.publish_grace,
    )
    if running is None:
        log.info("job %s was cancelled or taken over before the GPU call", run.id)
        return "dropped"
    # The endpoint had a free slot: let its most urgent waiting job try next.
    rt.publish(running.woken)
    try:
        payload = json.loads(running.payload or "")
    except ValueError as e:
        return run.finish(Status.FAILED, f"invalid job: payload: stored JSON is unreadable: {e}",
                          "invalid_input")
    started = time.monotonic()
    guard = WATCHDOG.guard(spec.timeout)  # the lease keeper cuts it if the job is cancelled
    rt.inflight.add(run.id, run.token, guard)
    run.gpu_called = True
    on_pieces = None
    if f.get("stream") == "1":
        def on_pieces(pieces: list[str]) -> None:  # as they arrive, never held back
            rt.store.stream_append(run.id, pieces, s.stream_maxlen,
                                   spec.timeout + s.result_ttl)
    try:
        resp = rt.vast.call_worker(answer, spec.path, payload, spec.timeout, guard=guard,
                                   on_pieces=on_pieces)
    except (WorkerUnavailable, WorkerTimeout, WorkerStreamBroken) as e:
        # The retry policy. A worker error before any work is re-routed; a timeout or a
        # broken stream (the GPU may have done the work) only for a job that opted in
        # (retry_on); every re-route within the job's max_reroutes (or the global one).
        kind = "worker_failed" if isinstance(e, WorkerUnavailable) else _kind(e)
        limit, retry_on = _retry_policy(f, s.max_reroutes)
        if kind != "worker_failed" and kind not in retry_on:
            return run.finish(Status.FAILED, str(e), kind, worker_status=e.status)
        run.reroutes += 1
        if run.reroutes > limit:
            what = "worker failed" if kind == "worker_failed" else f"GPU call failed ({kind})"
            return run.finish(
                Status.FAILED, f"{what} {run.reroutes} times, re-routes spent; last answer: {e}",
                kind, worker_status=e.status,
            )
        if kind != "worker_failed" and f.get("stream") == "1":
            rt.store.stream_reset(run.id, run.token)  # its reader follows the re-run from its start
        delay = poll_delay(run.reroutes - 1, s.poll_base, s.poll_cap)
        return run.wait(f"re-routing ({run.reroutes}/{limit}) after {e}", delay,
                        worker_status=e.status, request_idx="")
    except (WorkerRejected, WorkerBadAnswer, WorkerTLSError, WorkerAborted) as e:
        # A cut call (WorkerAborted) writes nothing if the job was cancelled meanwhile or
        # another run holds it now: finish says so.
        return run.finish(Status.FAILED, str(e), _kind(e), worker_status=e.status)
    finally:
        rt.inflight.remove(run.id)

    # 3. Store: first terminal write wins.
    is_json = not isinstance(resp.body, str)
    log.debug("job %s GPU call took %.3fs", run.id, time.monotonic() - started)
    return run.finish(
        Status.SUCCEEDED,
        worker_status=resp.status,
        result=json.dumps(resp.body, separators=(",", ":")) if is_json else resp.body,
        result_type="json" if is_json else "text",
    )


def _retry_policy(f: dict[str, str], default: int) -> tuple[int, set[str]]:
    """The job's re-route bound and the error kinds it may be re-run after (submit's
    ``max_reroutes``, ``retry_on``)."""
    try:
        limit = int(f["max_reroutes"]) if f.get("max_reroutes") else default
    except ValueError:
        limit = default
    return limit, set(filter(None, (f.get("retry_on") or "").split(",")))


def _poll_delay(run: Run, s: Settings) -> float:
    return poll_delay(max(0, run.polls - 1), s.poll_base, s.poll_cap)


def _number(f: dict[str, str], name: str) -> float | None:
    raw = f.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidJob(name, f"stored value {raw!r} is not a number") from None


_KINDS = {
    RouteAuthError: "route_auth",
    RouteRejected: "route_rejected",
    RouteBadAnswer: "route_bad_answer",
    WorkerTimeout: "worker_timeout",
    WorkerRejected: "worker_rejected",
    WorkerBadAnswer: "worker_bad_answer",
    WorkerTLSError: "worker_tls",
    WorkerAborted: "worker_aborted",
    WorkerStreamBroken: "worker_stream_broken",
}


def _kind(e: Exception) -> str:
    return next((k for cls, k in _KINDS.items() if isinstance(e, cls)), type(e).__name__)
