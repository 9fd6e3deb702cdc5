"""Operators' tools end to end (issue 15), through a real worker process, Redis and the
emulator: a cancel that frees the GPU, purge --running, re-running ended jobs (one at a
time, concurrently, in bulk), a per-job retry policy after timeouts, and finding jobs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator
from dispatcher.errors import RetryRefused
from dispatcher.model import STATUSES, Status
from dispatcher.store import Store, connect, finish_call, keys
from tests.poll import until

from .conftest import add_endpoint
from .test_cli_e2e import cli

pytestmark = pytest.mark.timeout(180)


def payload(**emulate: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "emulate": emulate}


def executions(vast: Emulator, p: dict[str, Any]) -> int:
    return int(vast.stats()["executions_by_payload"].get(p["id"], 0))


def interrupted(vast: Emulator, p: dict[str, Any]) -> int:
    return int(vast.stats()["cancelled_by_payload"].get(p["id"], 0))


def on_gpu(client: Client, vast: Emulator, job_id: str, p: dict[str, Any]) -> None:
    """Wait until the job is running and its GPU call is executing at the worker."""
    until(lambda: client.get_job(job_id).status == "running" and executions(vast, p) == 1,
          timeout=30, what=f"job {job_id} to get on a GPU")


def cli_on_a_terminal(env: dict[str, str], answer: str, *args: str
                      ) -> subprocess.CompletedProcess:
    """The CLI with a terminal as its stdin (it asks for confirmation), answering it."""
    master, slave = pty.openpty()
    try:
        os.write(master, answer.encode() + b"\n")
        return subprocess.run([sys.executable, "-m", "dispatcher", *args], stdin=slave,
                              capture_output=True, text=True, env={**os.environ, **env},
                              timeout=90)
    finally:
        os.close(master)
        os.close(slave)


# --- 1. a cancel that frees the GPU ----------------------------------------------------


def test_cancelling_a_running_job_cuts_its_gpu_call(client: Client, vast: Emulator) -> None:
    """Not streaming: the GPU call is held by the worker process, the cancel comes from
    this one. The holder sees the lease gone within a second and closes the connection;
    the emulated GPU (as Vast's PyWorker does on a disconnect) stops the work."""
    ep = add_endpoint(vast)
    p = payload(sleep=30)
    job_id = client.submit(ep, p, path="/generate", timeout=60)
    on_gpu(client, vast, job_id, p)
    assert client.cancel(job_id)
    cancelled_at = time.monotonic()
    until(lambda: interrupted(vast, p), timeout=10, what="the GPU call to be cut")
    assert time.monotonic() - cancelled_at < 1.0 + 2.0  # renewals each second; a loaded box
    assert interrupted(vast, p) == 1 and executions(vast, p) == 1
    job = client.get_job(job_id)
    assert job.status == "cancelled"
    assert job.error == "cancelled by request; its GPU call was interrupted"
    assert vast.stats()["endpoints"][ep]["running"] == 0  # the slot is free again


def test_purge_running_asks_counting_them_then_cuts_their_calls(
        e2e_env: dict[str, str], client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    ps = [payload(sleep=30) for _ in range(2)]
    ids = [client.submit(ep, p, path="/generate", timeout=60) for p in ps]
    for job_id, p in zip(ids, ps, strict=True):
        on_gpu(client, vast, job_id, p)
    # Without --running they are left alone, and the question says so.
    plain = cli_on_a_terminal(e2e_env, "y", "purge", ep)
    assert plain.returncode == 0, plain.stderr
    assert "Cancel 0 queued/waiting job(s)" in plain.stdout
    assert "(2 running are left alone)" in plain.stdout
    assert {client.get_job(i).status for i in ids} == {"running"}
    assert cli(e2e_env, "purge", ep, "--running").returncode == 2  # no terminal to ask on
    no = cli_on_a_terminal(e2e_env, "n", "purge", ep, "--running")
    assert "Cancel 2 job(s)" in no.stdout and "2 running" in no.stdout
    assert "nothing cancelled" in no.stdout
    assert {client.get_job(i).status for i in ids} == {"running"}
    yes = cli_on_a_terminal(e2e_env, "y", "purge", ep, "--running")
    assert yes.returncode == 0 and "2 job(s)" in yes.stdout, yes.stderr
    for job_id, p in zip(ids, ps, strict=True):
        until(lambda p=p: interrupted(vast, p), timeout=10, what="the purged call to be cut")
        job = client.get_job(job_id)
        assert job.status == "cancelled"
        assert job.error == "cancelled by purge; its GPU call was interrupted"


# --- 2. re-running ended jobs --------------------------------------------------------


def test_a_failed_job_rerun_succeeds_once_the_fault_is_lifted(
        e2e_env: dict[str, str], client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast, failure_rate=1.0)  # every GPU call answers 500
    p = payload()
    job_id = client.submit(ep, p, path="/generate", priority=3, timeout=30)
    failed = client.wait(job_id, timeout=60)
    assert failed.status == "failed" and failed.error_kind == "worker_failed"
    assert executions(vast, p) == 4  # the call and DISPATCHER_MAX_REROUTES=3 re-routes

    listed = cli(e2e_env, "jobs", "--endpoint", ep, "--status", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["status"], row["error_kind"]) == (job_id, "failed", "worker_failed")
    text = cli({**e2e_env, "COLUMNS": "120"}, "jobs", "--endpoint", ep)
    header, line = text.stdout.splitlines()
    assert header.split() == ["id", "status", "kind", "age", "ended", "endpoint"]
    assert line.split()[:3] == [job_id, "failed", "worker_failed"] and line.endswith(ep)

    vast.configure({"endpoints": {ep: {"failure_rate": 0.0}}})
    r = cli(e2e_env, "retry", job_id)
    assert r.returncode == 0 and f"{job_id} queued" in r.stdout, r.stderr
    job = client.wait(job_id, timeout=60)
    assert job.status == "succeeded" and job.result["payload"] == p
    assert job.retries == 1 and job.last_error_kind == "worker_failed"
    assert job.last_error == failed.error and job.error is None
    assert job.reroutes == 0 and job.priority == 3 and job.path == "/generate"
    assert executions(vast, p) == 5
    assert client.list_jobs(ep, "failed") == []
    assert [j.id for j in client.list_jobs(ep, "succeeded")] == [job_id]

    # A success is run again only when forced, and its payload was dropped at its end.
    again = cli(e2e_env, "retry", job_id)
    assert again.returncode == 1 and "--force" in again.stderr
    forced = cli(e2e_env, "retry", job_id, "--force")
    assert forced.returncode == 1 and "payload was dropped" in forced.stderr
    with pytest.raises(RetryRefused, match="payload was dropped"):
        client.retry(job_id, force=True)
    assert executions(vast, p) == 5


def test_two_retries_at_once_queue_the_job_once(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    p = payload(status=422, status_times=1)  # refused once (worker_rejected), then fine
    job_id = client.submit(ep, p, path="/generate")
    assert client.wait(job_id, timeout=60).error_kind == "worker_rejected"
    start = threading.Barrier(8)
    answers: list[bool] = []

    def retry() -> None:
        start.wait()
        answers.append(client.retry(job_id))

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] * 7 + [True]
    job = client.wait(job_id, timeout=60)
    assert job.status == "succeeded" and job.retries == 1
    time.sleep(1.0)  # a second run would have started by now
    assert executions(vast, p) == 2


def test_retry_failed_in_bulk_asks_then_reruns_only_the_kind_asked(
        e2e_env: dict[str, str], client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    flaky = [payload(fail_times=4) for _ in range(3)]  # worker_failed, then fine
    refused = [payload(status=422, status_times=1) for _ in range(2)]  # worker_rejected
    ids = {p["id"]: client.submit(ep, p, path="/generate") for p in flaky + refused}
    for job_id in ids.values():
        assert client.wait(job_id, timeout=60).status == "failed"
    args = ("retry", "--failed", ep, "--kind", "worker_failed", "--since", "1h")
    assert cli(e2e_env, *args).returncode == 2  # no terminal to ask on
    no = cli_on_a_terminal(e2e_env, "n", *args)
    assert "Run 3 failed (worker_failed) job(s)" in no.stdout and "nothing retried" in no.stdout
    r = cli_on_a_terminal(e2e_env, "y", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(" queued") == 3 and "3 of 3 job(s) queued again" in r.stderr
    for p in flaky:
        job = client.wait(ids[p["id"]], timeout=60)
        assert job.status == "succeeded" and job.last_error_kind == "worker_failed"
        assert executions(vast, p) == 5
    for p in refused:
        assert client.get_job(ids[p["id"]]).status == "failed" and executions(vast, p) == 1
    # The Python form: the rest, by their kind.
    assert sorted(client.retry_failed(ep, kind="worker_rejected")) == sorted(
        ids[p["id"]] for p in refused)
    for p in refused:
        assert client.wait(ids[p["id"]], timeout=60).status == "succeeded"


# --- 3. a retry policy per job -------------------------------------------------------


def test_an_opted_in_timeout_is_rerouted_a_default_one_is_not(
        client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast, hang_rate=1.0)  # every GPU call hangs, until lifted below
    opted, default = payload(), payload()
    a = client.submit(ep, opted, path="/generate", timeout=3, retry_on=["worker_timeout"],
                      max_reroutes=2)
    b = client.submit(ep, default, path="/generate", timeout=3)
    until(lambda: executions(vast, opted) == 1 and executions(vast, default) == 1,
          timeout=30)
    vast.configure({"endpoints": {ep: {"hang_rate": 0.0}}})  # before either times out
    job_a, job_b = client.wait(a, timeout=60), client.wait(b, timeout=60)
    # The opted-in job timed out, was re-routed (a fresh assignment) and ran again.
    assert job_a.status == "succeeded" and job_a.reroutes == 1
    assert job_a.worker_attempts == 2 and job_a.route_calls >= 2
    assert executions(vast, opted) == 2 and interrupted(vast, opted) == 1
    # The default job failed on its timeout and was never run again.
    assert job_b.status == "failed" and job_b.error_kind == "worker_timeout"
    assert job_b.reroutes == 0 and executions(vast, default) == 1


def test_an_opted_in_job_keeps_to_its_own_bound(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    p = payload(hang=True)
    job_id = client.submit(ep, p, path="/generate", timeout=1, max_reroutes=1,
                           retry_on=["worker_timeout"])
    job = client.wait(job_id, timeout=60)
    assert job.status == "failed" and job.error_kind == "worker_timeout"
    assert job.error.startswith("GPU call failed (worker_timeout) 2 times, re-routes spent")
    assert job.reroutes == 2 and executions(vast, p) == 2  # its bound, not the global 3


def test_an_opted_in_broken_stream_is_rerun_from_its_first_piece(
        client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    p = payload(stream={"pieces": 6, "interval": 0.02, "format": "ndjson", "drop_after": 2})
    job_id = client.submit(ep, p, path="/generate", stream=True, timeout=30, max_reroutes=1,
                           retry_on=["worker_stream_broken"])
    job = client.wait(job_id, timeout=60)
    assert job.status == "failed" and job.error_kind == "worker_stream_broken"
    assert job.reroutes == 2 and executions(vast, p) == 2
    # The re-run's pieces only, not the broken run's then the re-run's: 2, and the end.
    entries = client.store.redis.xrange(keys.STREAM(job_id))
    assert [sorted(fields) for _, fields in entries] == [["data"], ["data"], ["end"]]


# --- 4. finding jobs ----------------------------------------------------------------


def test_listing_under_10000_jobs_takes_under_50_ms(redis_server: RedisServer) -> None:
    """The issue's acceptance bound: 10,000 jobs of an endpoint in the index (written by
    the real transitions), the newest 50 of a status, and of every status, each listed in
    under 50 ms (the best of five tries, so a loaded machine does not fail it)."""
    settings = Settings(redis_url=redis_server.url, queue=f"list-{uuid.uuid4().hex[:8]}")
    client = Client(settings)
    store: Store = client.store
    ep = f"ep-{uuid.uuid4().hex[:8]}"
    n = 10_000
    jobs = [(f"{ep}-{i:05}", {"id": f"{ep}-{i:05}", "status": "queued", "endpoint": ep,
                              "cost": 1.0, "path": "/x", "payload": "{}", "max_wait": 60.0,
                              "timeout": 5.0, "priority": 0, "queue": settings.queue})
            for i in range(n)]
    for i in range(0, n, 1000):
        assert all(store.create_many(jobs[i:i + 1000], grace=600))
    ends = [(job_id, Status.FAILED if i % 4 else Status.CANCELLED)
            for i, (job_id, _) in enumerate(jobs[:n - 100])]  # 100 stay queued
    for i in range(0, len(ends), 1000):
        calls = [finish_call(settings.queue, job_id, status, 3600,
                             {"error": "boom", "error_kind": "worker_failed"}, 0, 15.0)
                 for job_id, status in ends[i:i + 1000]]
        store._eval_many(store._finish, calls)
    try:
        for status in ("failed", None):
            best = float("inf")
            for _ in range(5):
                t = time.perf_counter()
                got = client.list_jobs(ep, status, limit=50)
                best = min(best, time.perf_counter() - t)
            assert len(got) == 50
            print(f"listing {status or 'every status'} of {n} jobs: {best * 1000:.2f} ms")
            assert best < 0.050, f"listing {status or 'every status'} took {best * 1000:.1f} ms"
        newest = client.list_jobs(ep, "failed", limit=3)
        assert [j.id for j in newest] == [f"{ep}-{i:05}" for i in (9899, 9898, 9897)]
        assert client.list_jobs(ep, limit=2)[0].id == f"{ep}-09899"  # every status: latest
    finally:
        r = connect(redis_server.url)
        for i in range(0, n, 1000):
            r.delete(*[keys.JOB(job_id) for job_id, _ in jobs[i:i + 1000]])
        r.delete(*[keys.JOB_INDEX(ep, s) for s in STATUSES], keys.COUNTS(ep),
                 keys.PENDING_INDEX(settings.queue, ep), keys.WAITING(settings.queue))
        r.zrem(keys.ENDPOINTS(), ep)
        client.close()
