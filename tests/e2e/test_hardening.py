"""Issue 11's high-severity items end to end: a real worker process against the emulator's
hostile workers, and the run's own guards."""

from __future__ import annotations

import time
import uuid

import pytest

from dispatcher.client import Client
from dispatcher.emulator import Emulator

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(120)


def test_a_worker_dripping_headers_is_cut_at_the_jobs_timeout_and_runs_once(
        client: Client, vast: Emulator) -> None:
    """Item 1: a header line a second kept the old call open for 14 s past a 1 s timeout;
    its lease ended meanwhile and a second run called a GPU while the first was open."""
    ep = add_endpoint(vast)
    payload = {"id": uuid.uuid4().hex, "emulate": {"drip": {"interval": 1.0, "count": 30}}}
    started = time.monotonic()
    job = client.wait(client.submit(ep, payload, path="/x", timeout=1.0), timeout=60)
    took = time.monotonic() - started
    assert job.status == "failed" and job.error_kind == "worker_timeout", job
    assert "timeout=1s" in job.error
    assert took < 1.0 + 4.0  # the timeout, a route call and a loaded machine; not 30 s
    stats = vast.stats()
    assert stats["executions_by_payload"][payload["id"]] == 1  # one GPU run, never two
    time.sleep(2.5)  # nothing runs it again later either
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1


def test_a_long_gpu_call_keeps_its_lease_and_is_run_once(client: Client, vast: Emulator,
                                                         e2e_env: dict[str, str]) -> None:
    """The lease of a running job is renewed while its call is open: a call longer than
    DISPATCHER_LEASE (3 s here) is not handed to a second worker."""
    import redis

    ep = add_endpoint(vast)
    payload = {"id": uuid.uuid4().hex, "emulate": {"sleep": 4.0}}
    job_id = client.submit(ep, payload, path="/x", timeout=30)
    r = redis.Redis.from_url(e2e_env["REDIS_URL"], decode_responses=True)
    leases = set()
    deadline = time.monotonic() + 30
    while client.get_job(job_id).status in ("queued", "waiting", "running"):
        assert time.monotonic() < deadline, vast.stats()["executions_by_payload"]
        until = r.hget(f"dispatcher:job:{job_id}", "lease_until")
        if until and client.get_job(job_id).status == "running":
            leases.add(until)
        time.sleep(0.2)
    job = client.get_job(job_id)
    assert job.status == "succeeded", job
    assert len(leases) >= 3  # renewed about every second of the 4 s call
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1


def test_a_deeply_nested_answer_is_stored_as_text_not_run_again(client: Client,
                                                                 vast: Emulator) -> None:
    """Item 5: a 200 KB [[[...]]] answer raised RecursionError in decoding, which escaped
    the task: the job re-ran on a GPU every lease and finally said "expired"."""
    ep = add_endpoint(vast)
    payload = {"id": uuid.uuid4().hex, "emulate": {"nested": {"depth": 100_000}}}
    job = client.wait(client.submit(ep, payload, path="/x"), timeout=60)
    assert job.status == "succeeded", job
    assert isinstance(job.result, str) and job.result == "[" * 100_000 + "]" * 100_000
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1


def test_a_huge_answer_fails_clearly_and_once(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    limit = client.settings.max_result_bytes
    payload = {"id": uuid.uuid4().hex, "emulate": {"huge": {"bytes": limit + 1000,
                                                             "chunked": True}}}
    job = client.wait(client.submit(ep, payload, path="/x"), timeout=60)
    assert job.status == "failed" and job.error_kind == "worker_bad_answer", job
    assert "DISPATCHER_MAX_RESULT_BYTES" in job.error
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1


def test_a_key_with_a_trailing_newline_works_and_one_inside_refuses_to_start(
        e2e_env: dict[str, str], vast: Emulator) -> None:
    """Item 2: a mounted secret ending in a newline made every route call raise with the
    key (escaped) in the message, which then landed in the job, its error and webhooks."""
    import subprocess
    import sys

    from dispatcher.config import Settings
    from dispatcher.dev.procs import wait_for_worker, worker_process

    key = e2e_env["VAST_API_KEY"]
    env = {**e2e_env, "VAST_API_KEY": key + "\n", "DISPATCHER_QUEUE": f"nl-{uuid.uuid4().hex[:6]}"}
    worker = worker_process(env, concurrency=4)
    c = Client(Settings.from_env(env))
    with worker:
        wait_for_worker(env["REDIS_URL"], worker)
        ep = add_endpoint(vast)
        job = c.wait(c.submit(ep, {"id": uuid.uuid4().hex}, path="/x"), timeout=60)
        assert job.status == "succeeded", job
        c.close()
    assert key not in worker.log_text()
    bad = {**env, "VAST_API_KEY": key[:5] + "\n" + key[5:]}
    r = subprocess.run([sys.executable, "-m", "dispatcher", "worker"], env=bad, timeout=60,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "VAST_API_KEY: holds a control character" in r.stderr
    assert key[5:] not in r.stderr + r.stdout and key[:5] + "\\n" not in r.stderr


def test_a_worker_warns_loudly_when_redis_may_evict_live_jobs(e2e_env: dict[str, str]) -> None:
    """Item 10: an allkeys-* eviction policy deletes job hashes under memory pressure."""
    import redis

    from dispatcher.dev.procs import wait_for_worker, worker_process
    from dispatcher.dev.redis_server import RedisServer

    with RedisServer() as server:
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        env = {**e2e_env, "REDIS_URL": server.url}
        with worker_process(env, concurrency=2) as worker:
            wait_for_worker(server.url, worker)
            log = worker.log_text()
        assert "maxmemory-policy IS 'allkeys-lru'" in log and "EVICT LIVE JOBS" in log
        redis.Redis.from_url(server.url).config_set("maxmemory-policy", "noeviction")
        with worker_process(env, concurrency=2) as worker:
            wait_for_worker(server.url, worker)
            assert "maxmemory-policy" not in worker.log_text()
