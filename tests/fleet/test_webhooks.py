"""Webhooks end to end: real worker processes, a real local receiver.

Deliveries run in their own process (``dispatcher worker --webhooks``, issue 11 item 4)
beside a worker that dispatches. The receivers listen on 127.0.0.1, which webhooks may
not reach by default (item 3): the fleet here allows it with DISPATCHER_WEBHOOK_ALLOW,
and one test shows the same receiver refused without it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import Child, wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator, EmulatorConfig
from dispatcher.errors import InvalidJob
from dispatcher.store import keys
from dispatcher.webhooks import verify
from tests.peer import peer
from tests.poll import until_status

API_KEY = "hook-vast-key-0a1b"
SECRET = "hook-signing-secret-9c8d"
# What an internal service might answer: never kept in webhook_last_error.
ANSWER = "receiver-answer-canary-51f0"
TIMEOUT = 4  # DISPATCHER_WEBHOOK_TIMEOUT of the fleet here


class Receiver:
    """An app's webhook endpoint: records every request; answers as told per path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.plan: dict[str, list[int]] = {}  # path -> statuses to answer, then 204
        self.slow: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body, "at": time.time()})
                if self.path in receiver.slow:
                    time.sleep(TIMEOUT + 2)
                plan = receiver.plan.get(self.path) or []
                status = plan.pop(0) if plan else 204
                answer = b"" if status == 204 else f'{{"error": "{ANSWER}"}}'.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


def fleet_env(redis_server: RedisServer, route_url: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
            "VAST_ROUTE_URL": route_url, "DISPATCHER_WEBHOOK_SECRET": SECRET,
            "DISPATCHER_WEBHOOK_TIMEOUT": str(TIMEOUT), "DISPATCHER_WEBHOOK_ATTEMPTS": "3",
            "DISPATCHER_MOVER_INTERVAL": "0.05",
            "DISPATCHER_QUEUE": f"hook-{uuid.uuid4().hex[:6]}", **extra}


def webhooks_process(env: dict[str, str]) -> Child:
    return worker_process(env, concurrency=8, name="webhooks", webhooks=True)


@pytest.fixture(scope="module")
def vast() -> Iterator[Emulator]:
    config = EmulatorConfig.from_dict({"api_key": API_KEY, "endpoints": {
        "hooked": {"workers": 1, "max_workers": 1, "cold_start": 0.1, "concurrency": 16},
        # Never a worker: a job there waits until it is cancelled.
        "no-gpus": {"workers": 0, "max_workers": 0}}})
    with Emulator(config) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def setup(redis_server: RedisServer, vast: Emulator, receiver: Receiver
          ) -> Iterator[tuple[Client, Receiver, str]]:
    # Deliveries here go to receivers on 127.0.0.1: allowed for this fleet only.
    env = fleet_env(redis_server, vast.route_url, DISPATCHER_WEBHOOK_ALLOW="127.0.0.0/8")
    worker: Child = worker_process(env, concurrency=4)
    hooks = webhooks_process(env)
    with worker, hooks:
        wait_for_worker(redis_server.url, worker)
        wait_for_worker(redis_server.url, hooks)
        client = Client(Settings.from_env(env))
        yield client, receiver, "hooked"
        client.close()
        logs = worker.log_text() + hooks.log_text()
    assert SECRET not in logs and API_KEY not in logs


def _hook_settled(client: Client, job_id: str, timeout: float = 30) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get_job(job_id)
        if job.webhook_status in ("delivered", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"webhook not settled: {client.get_job(job_id)}")


def test_completed_job_is_posted_signed(setup: tuple[Client, Receiver, str]) -> None:
    client, receiver, ep = setup
    job_id = client.submit(ep, {"prompt": "secret-prompt"}, path="/x",
                           webhook=receiver.url + "/ok", webhook_events=["completed"])
    job = _hook_settled(client, job_id)
    assert job.status == "succeeded" and job.webhook_status == "delivered"
    (req,) = receiver.to("/ok")
    assert verify(SECRET, req["headers"], req["body"]) == f"{job_id}.succeeded"
    doc = json.loads(req["body"])
    assert doc["event"] == "succeeded" and doc["job"]["id"] == job_id
    assert doc["job"]["status"] == "succeeded" and doc["job"]["result"] == job.result
    # The job as get_job shows it: the worker's answer, not the submitted payload field.
    assert "payload" not in doc["job"] and API_KEY.encode() not in req["body"]


def test_5xx_is_retried_with_the_same_delivery_id(setup: tuple[Client, Receiver, str]) -> None:
    client, receiver, ep = setup
    receiver.plan["/flaky"] = [503, 500]
    job_id = client.submit(ep, {"n": 1}, path="/x", webhook=receiver.url + "/flaky")
    job = _hook_settled(client, job_id)
    assert job.webhook_status == "delivered" and job.webhook_attempts == 3
    reqs = receiver.to("/flaky")
    assert len(reqs) == 3
    assert {r["headers"]["X-Dispatcher-Delivery"] for r in reqs} == {f"{job_id}.succeeded"}
    assert reqs[1]["at"] - reqs[0]["at"] >= 0.4  # backoff, not a busy loop
    for r in reqs:
        verify(SECRET, r["headers"], r["body"])


def test_a_dead_receiver_never_changes_the_job(setup: tuple[Client, Receiver, str]) -> None:
    client, receiver, ep = setup
    receiver.plan["/down"] = [503] * 10
    job_id = client.submit(ep, {"n": 2}, path="/x", webhook=receiver.url + "/down")
    job = _hook_settled(client, job_id)
    assert job.webhook_status == "failed" and job.webhook_attempts == 3
    assert "503" in job.webhook_last_error
    assert job.status == "succeeded" and job.result is not None and job.error is None


def test_the_receivers_status_is_kept_never_its_body(
        setup: tuple[Client, Receiver, str]) -> None:
    """Issue 11 item 3: an internal service's answer was quoted in webhook_last_error."""
    client, receiver, ep = setup
    receiver.plan["/gone"] = [404]
    job_id = client.submit(ep, {"n": 6}, path="/x", webhook=receiver.url + "/gone")
    job = _hook_settled(client, job_id)
    assert job.webhook_status == "failed" and job.webhook_attempts == 1
    stored = client.store.redis.hgetall(keys.job_key(job_id))
    assert stored["webhook_last_status"] == "404"
    assert stored["webhook_last_error"] == "HTTP 404 from receiver, not retried"
    assert ANSWER not in str(stored)


def test_a_hostile_receiver_stalls_no_dispatch(setup: tuple[Client, Receiver, str]) -> None:
    """Issue 11 item 4: deliveries shared the dispatch threads, and a receiver that drips
    a header line a second held each one far past its timeout. Now 8 such deliveries
    (twice the dispatch worker's threads) hold only webhook threads, each until its
    deadline: jobs submitted meanwhile all end while every delivery is still open."""
    client, _, ep = setup
    with peer() as drip:
        drip.reply(status=200, header_drip=1.0)  # 30 lines: 30 s unless cut
        hooked = [client.submit(ep, {"n": n}, path="/x", webhook=drip.url + "/drip")
                  for n in range(8)]
        assert {client.wait(i, timeout=30).status for i in hooked} == {"succeeded"}
        deadline = time.time() + 20
        while len(drip.seen) < 8 and time.time() < deadline:
            time.sleep(0.05)
        plain = [client.submit(ep, {"plain": n}, path="/x") for n in range(8)]
        assert {client.wait(i, timeout=30).status for i in plain} == {"succeeded"}
        open_now = [client.get_job(i) for i in hooked]
        assert [(j.webhook_status, j.webhook_attempts) for j in open_now] == [
            ("pending", 1)] * 8
        assert len(drip.seen) == 8
        # Each attempt ends at DISPATCHER_WEBHOOK_TIMEOUT, not when the drip would.
        for i in hooked:
            job = _hook_settled(client, i, timeout=20)
            assert job.webhook_status == "failed" and job.webhook_attempts == 1
            assert "timeout" in job.webhook_last_error.lower()
        assert len(drip.seen) == 8  # a request that was sent is not sent again


def test_deliveries_wait_for_a_webhooks_worker_and_loopback_needs_the_allow_list(
        redis_server: RedisServer, vast: Emulator, receiver: Receiver) -> None:
    """A fleet without DISPATCHER_WEBHOOK_ALLOW. Plain workers deliver nothing (stats
    shows the deliveries waiting); the webhooks worker then refuses the receiver the
    other fleet reaches, at 127.0.0.1, whichever way the URL names it."""
    env = fleet_env(redis_server, vast.route_url)
    client = Client(Settings.from_env(env))
    # A client that allows loopback, submitting to this fleet: the workers decide.
    lenient = Client(Settings.from_env({**env, "DISPATCHER_WEBHOOK_ALLOW": "127.0.0.0/8"}))
    with pytest.raises(InvalidJob, match="DISPATCHER_WEBHOOK_ALLOW") as e:
        client.submit("hooked", {}, path="/x", webhook=receiver.url + "/literal")
    assert e.value.field == "webhook"
    worker = worker_process(env, concurrency=2)
    with worker:
        wait_for_worker(redis_server.url, worker)
        by_name = client.submit("hooked", {"n": 1}, path="/x",
                                webhook=f"http://localhost:{receiver.port}/by-name")
        literal = lenient.submit("hooked", {"n": 2}, path="/x",
                                 webhook=receiver.url + "/literal")
        for i in (by_name, literal):
            assert client.wait(i, timeout=30).status == "succeeded"
        time.sleep(1.5)  # many mover rounds: nothing delivers without a webhooks worker
        for i in (by_name, literal):
            job = client.get_job(i)
            assert (job.webhook_status, job.webhook_attempts) == ("pending", 0)
        assert client.stats()["webhooks_queued"] == 2
        hooks = webhooks_process(env)
        with hooks:
            wait_for_worker(redis_server.url, hooks)
            for i in (by_name, literal):
                job = _hook_settled(client, i)
                assert job.webhook_status == "failed" and job.webhook_attempts == 1
                assert "loopback" in job.webhook_last_error
                assert "DISPATCHER_WEBHOOK_ALLOW" in job.webhook_last_error
                assert job.status == "succeeded"
            assert client.stats()["webhooks_queued"] == 0
            logs = hooks.log_text()
    assert receiver.to("/by-name") == [] and receiver.to("/literal") == []
    assert SECRET not in logs + worker.log_text()
    client.close()
    lenient.close()


def test_no_answer_in_time_is_not_retried(setup: tuple[Client, Receiver, str]) -> None:
    client, receiver, ep = setup
    receiver.slow.add("/slow")
    job_id = client.submit(ep, {"n": 3}, path="/x", webhook=receiver.url + "/slow")
    job = _hook_settled(client, job_id)
    time.sleep(2)
    assert job.webhook_status == "failed" and len(receiver.to("/slow")) == 1
    assert "timeout" in job.webhook_last_error.lower()


def test_event_filter_and_cancel(setup: tuple[Client, Receiver, str]) -> None:
    client, receiver, ep = setup
    only_failures = client.submit(ep, {"n": 4}, path="/x", webhook=receiver.url + "/fail-only",
                                  webhook_events=["failed"])
    assert client.wait(only_failures, timeout=30).status == "succeeded"
    # On an endpoint Vast does not know the job fails at its first route call (a 400),
    # which could beat the cancel: one with no GPUs keeps it waiting.
    cancelled = client.submit("no-gpus", {"n": 5}, path="/x", max_wait=600,
                              webhook=receiver.url + "/cancel", webhook_events=["cancelled"])
    until_status(client, cancelled, "waiting", timeout=30)
    assert client.cancel(cancelled)
    job = _hook_settled(client, cancelled)
    assert job.webhook_status == "delivered"
    (req,) = receiver.to("/cancel")
    assert json.loads(req["body"])["event"] == "cancelled"
    time.sleep(1)
    assert receiver.to("/fail-only") == []
    assert client.get_job(only_failures).webhook_status is None


def test_bad_webhook_input_names_the_field(setup: tuple[Client, Receiver, str]) -> None:
    client, _, ep = setup
    for kwargs, field in (({"webhook": "ftp://x/y"}, "webhook"),
                          ({"webhook": "http://h/x", "webhook_events": ["done"]},
                           "webhook_events"),
                          ({"webhook": "http://h/x", "webhook_events": "completed"},
                           "webhook_events")):
        with pytest.raises(InvalidJob) as e:
            client.submit(ep, {}, path="/x", **kwargs)
        assert e.value.field == field
    no_secret = Client(client.settings.with_(webhook_secret=None), client.app)
    with pytest.raises(InvalidJob, match="DISPATCHER_WEBHOOK_SECRET"):
        no_secret.submit(ep, {}, path="/x", webhook="http://h/x")
    no_secret.close()
