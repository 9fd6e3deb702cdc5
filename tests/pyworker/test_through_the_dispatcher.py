"""The whole offline stack of "Develop your PyWorker offline": a dispatcher worker process
and real Redis in front of the emulator as Vast's control plane, Vast's real PyWorker
(``vastai`` 1.9.1) and a model server. Jobs go dispatcher -> emulator -> PyWorker -> model
and back (issue 10, section 4)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator, EmulatorConfig

from .conftest import KEY, Launcher, pyworker_state, wait_for

pytestmark = [pytest.mark.pyworker, pytest.mark.timeout(180)]

FAST = {"DISPATCHER_POLL_BASE": "0.1", "DISPATCHER_POLL_CAP": "0.5",
        "DISPATCHER_MOVER_INTERVAL": "0.05", "DISPATCHER_MAX_REROUTES": "2"}


def emulator(**endpoint: object) -> Emulator:
    return Emulator(EmulatorConfig.from_dict({
        "api_key": KEY, "endpoints": {"llm": {"workers_from": "pyworker", "concurrency": 8,
                                              **endpoint}}}))


@contextmanager
def dispatcher_for(redis_server: RedisServer, vast: Emulator) -> Iterator[Client]:
    env = {**FAST, "REDIS_URL": redis_server.url, "VAST_API_KEY": KEY,
           "VAST_ROUTE_URL": vast.route_url, "DISPATCHER_QUEUE": f"pw-{uuid.uuid4().hex[:6]}"}
    worker = worker_process(env, concurrency=16)
    client = Client(Settings.from_env(env))
    with worker:
        wait_for_worker(redis_server.url, worker)
        try:
            yield client
        finally:
            client.close()
            assert KEY not in worker.log_text()


def submit(client: Client, n: int, **options: object) -> tuple[str, dict]:
    payload = {"prompt": f"job {n}", "n": n, **options}
    return client.submit("llm", payload, path="/generate", max_wait=120, timeout=30), payload


def test_jobs_through_the_dispatcher_and_a_real_pyworker_cold_start_included(
        launcher: Launcher, redis_server: RedisServer) -> None:
    with emulator() as vast, dispatcher_for(redis_server, vast) as client:
        jobs = [submit(client, n) for n in range(12)]
        wait_for(lambda: client.get_job(jobs[0][0]).status == "waiting", 20, "jobs to wait")
        assert client.get_job(jobs[0][0]).wait_reason.startswith("no worker available")
        model = launcher.model(delay=0.5)
        pw = launcher.pyworker(vast, model)  # the cold start ends when it reports loaded
        for job_id, payload in jobs:
            job = client.wait(job_id, timeout=90)
            assert job.status == "succeeded", (job, pw.proc.log_text()[-2000:])
            assert job.result["echo"] == payload and job.result["path"] == "/generate"
            assert job.worker_url == pw.url and job.route_calls >= 2
            assert job.request_idx is not None  # Vast's queue place, kept across polls


def test_published_shape_assignments_get_pyworkers_422_and_fail_quoting_it(
        launcher: Launcher, redis_server: RedisServer) -> None:
    """An answer as Vast's API reference documents it lacks request_idx, which the real
    PyWorker requires: the job fails at once (permanent), quoting the worker."""
    with emulator(answer_shape="published") as vast, dispatcher_for(redis_server, vast) as c:
        model = launcher.model()
        pw = launcher.pyworker(vast, model)
        wait_for(lambda: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                 "the PyWorker to be ready", [pw.proc, model.proc])
        job = c.wait(submit(c, 0)[0], timeout=60)
        assert job.status == "failed" and job.error_kind == "worker_rejected", job
        assert job.worker_status == 422 and job.reroutes == 0
        assert '{"auth_data": {"request_idx": "missing parameter"}}' in job.error


def test_a_pyworker_with_another_key_answers_401_the_job_re_routes_then_fails_clearly(
        launcher: Launcher, redis_server: RedisServer) -> None:
    with emulator() as vast, emulator(report_timeout=600) as other:
        model = launcher.model()
        pw = launcher.pyworker(vast, model)  # it holds `vast`'s public key
        wait_for(lambda: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                 "the PyWorker to be ready", [pw.proc, model.proc])
        # `other` routes to it too, signing with its own key.
        requests.post(other.url + "/worker_status/", timeout=5, json={
            "id": 1, "mtoken": "llm", "url": pw.url, "loadtime": 1.0, "error_msg": "",
            "cur_load": 0, "max_perf": 100}).raise_for_status()
        with dispatcher_for(redis_server, other) as client:
            job = client.wait(submit(client, 0)[0], timeout=60)
        assert job.status == "failed" and job.error_kind == "worker_failed", job
        assert job.worker_status == 401 and job.reroutes == 3  # DISPATCHER_MAX_REROUTES=2
        assert "assignment signature rejected" in job.error and "(empty body)" in job.error


def test_one_of_two_pyworkers_killed_mid_run_every_job_still_ends(
        launcher: Launcher, redis_server: RedisServer) -> None:
    with emulator(report_timeout=3.0, assignment_ttl=1.0) as vast, \
            dispatcher_for(redis_server, vast) as client:
        model = launcher.model()
        doomed, survivor = launcher.pyworker(vast, model), launcher.pyworker(vast, model)
        for pw in (doomed, survivor):
            wait_for(lambda pw=pw: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                     "both PyWorkers to be ready", [doomed.proc, survivor.proc, model.proc])
        jobs = [submit(client, n, sleep=0.3) for n in range(40)]
        wait_for(lambda: sum(client.get_job(i).status == "succeeded" for i, _ in jobs) >= 5,
                 60, "some jobs to finish")
        doomed.proc.kill()
        ended = {i: client.wait(i, timeout=120) for i, _ in jobs}
        assert all(j.done for j in ended.values())  # none lost, none stuck
        succeeded = [j for j in ended.values() if j.status == "succeeded"]
        for (job_id, payload) in jobs:
            if ended[job_id].status == "succeeded":
                assert ended[job_id].result["echo"] == payload
        # A call cut by the kill after the request was sent is a timeout-like failure (the
        # GPU may have run it), never a silent loss; the rest are re-routed to the survivor.
        others = [j for j in ended.values() if j.status != "succeeded"]
        assert all(j.error_kind in ("worker_timeout", "worker_failed") for j in others), others
        assert len(succeeded) >= 30
        assert any(j.worker_url == survivor.url for j in succeeded)


def test_a_streamed_answer_through_a_real_pyworker_reaches_the_reader_as_it_comes(
        launcher: Launcher, redis_server: RedisServer) -> None:
    """dispatcher -> emulator -> PyWorker -> a model writing an SSE event every 50 ms: the
    reader gets each event's data, the first one while the model still writes."""
    with emulator() as vast, dispatcher_for(redis_server, vast) as client:
        model = launcher.model()
        pw = launcher.pyworker(vast, model)
        wait_for(lambda: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                 "the PyWorker to be ready", [pw.proc, model.proc])
        pieces = 30
        job_id = client.submit("llm", {"id": "s1", "pieces": pieces}, path="/generate_stream",
                               stream=True, max_wait=60, timeout=30)
        stream = client.stream(job_id, timeout=60)
        first = json.loads(next(stream))
        first_at = time.time()
        rest = list(stream)
        events = [first, *(json.loads(p) for p in rest[:-1])]
        assert rest[-1] == "[DONE]"
        assert [e["i"] for e in events] == list(range(pieces))
        assert first_at < events[-1]["t"]  # read before the model wrote the last event
        job = client.get_job(job_id)
        assert job.status == "succeeded" and job.result.count("data: ") == pieces + 1
