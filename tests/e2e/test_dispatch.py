"""The dispatcher end to end: real Celery worker process, real Redis, emulator over HTTP."""

from __future__ import annotations

import time
import uuid

import pytest

from dispatcher.client import Client
from dispatcher.emulator import Emulator
from dispatcher.errors import JobNotFound
from tests.poll import until_status

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(180)


def payload(**extra: object) -> dict:
    return {"id": uuid.uuid4().hex, "prompt": "hello", **extra}


def wait_all(client: Client, ids: list[str], timeout: float = 60.0) -> dict:
    return {i: client.wait(i, timeout=timeout) for i in ids}


@pytest.mark.parametrize("shape", ["live", "published"])
def test_cold_start_jobs_wait_then_all_succeed_with_their_own_result(
    client: Client, vast: Emulator, shape: str
) -> None:
    """Both answer shapes: Vast's live answers (with request_idx), and exactly the fields
    of its published schema (none)."""
    ep = add_endpoint(vast, workers=0, max_workers=2, cold_start=1.5, concurrency=4,
                      answer_shape=shape)
    payloads = [payload(n=n) for n in range(20)]
    ids = [client.submit(ep, p, cost=10, path="/v1/completions", max_wait=60) for p in payloads]
    until_status(client, ids[0], "waiting")
    waiting = client.get_job(ids[0])
    assert waiting.wait_reason.startswith("no worker available")
    assert waiting.next_poll_at is not None
    jobs = wait_all(client, ids)
    for p, job_id in zip(payloads, ids, strict=True):
        job = jobs[job_id]
        assert job.status == "succeeded", job
        assert job.result["payload"] == p  # the right result for the right job
        assert job.result["path"] == "/v1/completions"
        assert job.route_calls >= 2  # it had to wait for the cold start
        assert job.worker_status == 200 and job.worker_url == job.result["worker"]
    stats = vast.stats()
    assert all(stats["executions_by_payload"][p["id"]] == 1 for p in payloads)


def test_route_400_unknown_endpoint_fails_at_once(client: Client) -> None:
    job = client.wait(client.submit("no-such-endpoint", payload(), path="/x"), timeout=20)
    assert job.status == "failed" and job.error_kind == "route_rejected"
    assert "400" in job.error and job.route_calls == 1


def test_route_401_fails_every_job_fast(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    vast.configure({"api_key": "a-different-key"})
    try:
        ids = [client.submit(ep, payload(), path="/x") for _ in range(5)]
        jobs = wait_all(client, ids, timeout=20)
    finally:
        vast.configure({"api_key": client.settings.vast_api_key})
    for job in jobs.values():
        assert job.status == "failed" and job.error_kind == "route_auth", job
        assert job.route_calls == 1  # no retry storm
        assert client.settings.vast_api_key not in job.error


def test_route_429_and_5xx_bursts_are_delays_not_failures(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast, workers=2, concurrency=8)
    vast.configure({"route_429_rate": 0.4, "route_error_rate": 0.3})
    try:
        ids = [client.submit(ep, payload(), path="/x", max_wait=60) for _ in range(30)]
        jobs = wait_all(client, ids)
    finally:
        vast.configure({"route_429_rate": 0.0, "route_error_rate": 0.0})
    assert all(j.status == "succeeded" for j in jobs.values())
    assert sum(j.route_calls for j in jobs.values()) > len(ids)  # some calls were refused


def test_worker_5xx_then_success_reroutes(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    p = payload(emulate={"fail_times": 2})
    job = client.wait(client.submit(ep, p, path="/generate"), timeout=30)
    assert job.status == "succeeded" and job.result["payload"] == p
    assert job.reroutes == 2 and job.worker_attempts == 3


def test_worker_5xx_forever_fails_after_bounded_reroutes(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    job = client.wait(client.submit(ep, payload(emulate={"status": 503}), path="/x"), timeout=30)
    assert job.status == "failed" and job.error_kind == "worker_failed"
    assert job.worker_attempts == 4 and "503" in job.error


def test_worker_hang_times_out_and_says_the_gpu_may_have_run(
    client: Client, vast: Emulator
) -> None:
    ep = add_endpoint(vast)
    job = client.wait(client.submit(ep, payload(emulate={"hang": True}), path="/x", timeout=1.0),
                      timeout=30)
    assert job.status == "failed" and job.error_kind == "worker_timeout"
    assert "may have" in job.error
    assert job.finished_at - job.assigned_at < 10


def test_expiry_names_the_last_route_status(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast, workers=0, max_workers=0)
    job = client.wait(client.submit(ep, payload(), path="/x", max_wait=1.0), timeout=30)
    assert job.status == "expired" and "last route status" in job.error
    assert job.route_calls >= 2 and job.finished_at - job.created_at < 5


def test_cancel_while_waiting(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast, workers=0, max_workers=0)
    p = payload()
    job_id = client.submit(ep, p, path="/x", max_wait=60)
    until_status(client, job_id, "waiting")
    assert client.cancel(job_id)
    assert not client.cancel(job_id)  # already ended
    time.sleep(1.0)  # any in-flight poll ends without reviving it
    job = client.get_job(job_id)
    assert job.status == "cancelled" and job.error == "cancelled by request"
    assert p["id"] not in vast.stats()["executions_by_payload"]


def test_idempotent_resubmit_runs_once(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    p = payload()
    key = f"order-{uuid.uuid4().hex}"
    assert client.submit(ep, p, path="/x", job_id=key) == key
    assert client.submit(ep, p, path="/x", job_id=key) == key
    assert client.wait(key, timeout=30).status == "succeeded"
    assert client.submit(ep, p, path="/x", job_id=key) == key
    time.sleep(0.5)
    assert vast.stats()["executions_by_payload"][p["id"]] == 1


def test_unknown_id_says_unknown(client: Client) -> None:
    job = client.get_job("never-submitted")
    assert job.status == "unknown" and not job.known
    with pytest.raises(JobNotFound):  # issue 11 item 10: wait() raises on unknown
        client.wait("never-submitted", timeout=1)
    assert not client.cancel("never-submitted")


def test_thousand_jobs_on_a_cold_start_none_lost_none_duplicated(
    client: Client, vast: Emulator
) -> None:
    ep = add_endpoint(vast, workers=0, max_workers=8, cold_start=2.0, concurrency=16)
    payloads = [payload(n=n) for n in range(1000)]
    ids = [client.submit(ep, p, path="/x", cost=1, max_wait=120) for p in payloads]
    jobs = wait_all(client, ids, timeout=120)
    statuses = [j.status for j in jobs.values()]
    assert statuses.count("succeeded") == 1000, {s: statuses.count(s) for s in set(statuses)}
    for p, job_id in zip(payloads, ids, strict=True):
        assert jobs[job_id].result["payload"] == p
    execs = vast.stats()["executions_by_payload"]
    assert [execs.get(p["id"], 0) for p in payloads] == [1] * 1000
