"""Webhooks end to end: a real worker process POSTs to a real local receiver."""

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
from dispatcher.webhooks import verify

API_KEY = "hook-vast-key-0a1b"
SECRET = "hook-signing-secret-9c8d"


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
                    time.sleep(3)
                plan = receiver.plan.get(self.path) or []
                status = plan.pop(0) if plan else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture(scope="module")
def setup(redis_server: RedisServer) -> Iterator[tuple[Client, Receiver, str]]:
    config = EmulatorConfig.from_dict({"api_key": API_KEY, "endpoints": {
        "hooked": {"workers": 1, "max_workers": 1, "cold_start": 0.1, "concurrency": 8}}})
    receiver = Receiver()
    with Emulator(config) as vast:
        env = {"REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
               "VAST_ROUTE_URL": vast.route_url, "DISPATCHER_WEBHOOK_SECRET": SECRET,
               "DISPATCHER_WEBHOOK_TIMEOUT": "1", "DISPATCHER_WEBHOOK_ATTEMPTS": "3",
               "DISPATCHER_MOVER_INTERVAL": "0.05",
               "DISPATCHER_QUEUE": f"hook-{uuid.uuid4().hex[:6]}"}
        worker: Child = worker_process(env, concurrency=8)
        with worker:
            wait_for_worker(redis_server.url, worker)
            client = Client(Settings.from_env(env))
            yield client, receiver, "hooked"
            client.close()
            logs = worker.log_text()
    receiver.server.shutdown()
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


def test_read_timeout_is_not_retried(setup: tuple[Client, Receiver, str]) -> None:
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
    cancelled = client.submit("no-such-endpoint-yet", {"n": 5}, path="/x", max_wait=600,
                              webhook=receiver.url + "/cancel", webhook_events=["cancelled"])
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
