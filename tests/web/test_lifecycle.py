"""Lifecycle events: the `started` webhook (signed, retried, one delivery per event, in
order) and watch() (sync and asyncio): real worker process, Redis, emulator, receiver."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.aio import AsyncClient
from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator, EmulatorConfig
from dispatcher.errors import InvalidJob, JobNotFound, WaitTimeout
from dispatcher.webhooks import verify
from tests.fleet.test_webhooks import Receiver

pytestmark = pytest.mark.timeout(120)

API_KEY = "life-vast-key-77aa"
SECRET = "life-signing-secret-31bc"
ORDER = ["queued", "waiting", "running", "succeeded"]


@pytest.fixture(scope="module")
def env(redis_server: RedisServer) -> Iterator[dict[str, str]]:
    config = EmulatorConfig.from_dict({"api_key": API_KEY, "endpoints": {}})
    with Emulator(config) as vast:
        e = {"REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
             "VAST_ROUTE_URL": vast.route_url, "DISPATCHER_WEBHOOK_SECRET": SECRET,
             "DISPATCHER_WEBHOOK_TIMEOUT": "2", "DISPATCHER_WEBHOOK_ATTEMPTS": "4",
             "DISPATCHER_MOVER_INTERVAL": "0.05", "DISPATCHER_POLL_BASE": "0.1",
             "DISPATCHER_POLL_CAP": "0.3", "DISPATCHER_MAX_REROUTES": "2",
             "DISPATCHER_QUEUE": f"life-{uuid.uuid4().hex[:6]}", "_EMULATOR": vast.url,
             # The receiver is on 127.0.0.1, refused unless allowed (issue 11 item 3).
             "DISPATCHER_WEBHOOK_ALLOW": "127.0.0.0/8"}
        worker = worker_process(e, concurrency=16)
        hooks = worker_process(e, concurrency=4, name="webhooks", webhooks=True)
        with worker, hooks:
            wait_for_worker(redis_server.url, worker)
            wait_for_worker(redis_server.url, hooks)
            yield e
            logs = worker.log_text() + hooks.log_text()
    assert SECRET not in logs and API_KEY not in logs


@pytest.fixture(scope="module")
def client(env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings.from_env(env))
    yield c
    c.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def endpoint(env: dict[str, str], **config: Any) -> str:
    import requests

    name = f"ep-{uuid.uuid4().hex[:8]}"
    base = {"workers": 1, "max_workers": 1, "cold_start": 0.2, "concurrency": 8,
            "latency": {"kind": "fixed", "seconds": 0.3}}
    requests.post(env["_EMULATOR"] + "/_emulator/config",
                  json={"endpoints": {name: {**base, **config}}}, timeout=10
                  ).raise_for_status()
    return name


def settled(client: Client, job_id: str, delivery: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.webhook_delivery_id == delivery and job.webhook_status in ("delivered",
                                                                           "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"delivery {delivery} not settled: {client.get_job(job_id)}")


def events(receiver: Receiver, path: str) -> list[tuple[str, str]]:
    """(event, delivery id) of each request, in order, each signature checked. The body
    holds the job as it is when the attempt is made: after a GPU was assigned."""
    out = []
    for r in receiver.to(path):
        verify(SECRET, r["headers"], r["body"])
        doc = json.loads(r["body"])
        assert doc["event"] == r["headers"]["X-Dispatcher-Event"]
        assert doc["job"]["assigned_at"] and doc["job"]["status"] != "waiting"
        if doc["event"] != "started":
            assert doc["job"]["status"] == doc["event"]
        out.append((doc["event"], r["headers"]["X-Dispatcher-Delivery"]))
    return out


def test_started_then_completed_each_signed_with_its_own_delivery_id(
        env: dict[str, str], client: Client, receiver: Receiver) -> None:
    ep = endpoint(env)
    job_id = client.submit(ep, {"n": 1}, path="/x", webhook=receiver.url + "/both",
                           webhook_events=["started", "completed"])
    settled(client, job_id, f"{job_id}.succeeded")
    assert events(receiver, "/both") == [
        ("started", f"{job_id}.started"), ("succeeded", f"{job_id}.succeeded")]
    started = json.loads(receiver.to("/both")[0]["body"])["job"]
    assert started["worker_url"] and started["assigned_at"] and "payload" not in started


def test_started_alone_and_completed_alone(env: dict[str, str], client: Client,
                                           receiver: Receiver) -> None:
    ep = endpoint(env)
    only_started = client.submit(ep, {"n": 2}, path="/x", webhook=receiver.url + "/s",
                                 webhook_events=["started"])
    default = client.submit(ep, {"n": 3}, path="/x", webhook=receiver.url + "/c")
    settled(client, only_started, f"{only_started}.started")
    settled(client, default, f"{default}.succeeded")
    assert client.wait(only_started).status == "succeeded"
    time.sleep(0.5)  # nothing else may come for either
    assert events(receiver, "/s") == [("started", f"{only_started}.started")]
    assert events(receiver, "/c") == [("succeeded", f"{default}.succeeded")]


def test_an_end_waits_behind_a_started_delivery_being_retried(
        env: dict[str, str], client: Client, receiver: Receiver) -> None:
    """The job ends while `started` is being retried (503 first): both are delivered,
    in order, one delivery per event, the end's own attempts counted from zero."""
    ep = endpoint(env, latency={"kind": "fixed", "seconds": 0.01})
    receiver.plan["/retry"] = [503]
    job_id = client.submit(ep, {"n": 4}, path="/x", webhook=receiver.url + "/retry",
                           webhook_events=["started", "succeeded"])
    assert client.wait(job_id).status == "succeeded"
    job = settled(client, job_id, f"{job_id}.succeeded")
    assert job.webhook_status == "delivered" and job.webhook_attempts == 1
    assert events(receiver, "/retry") == [
        ("started", f"{job_id}.started"), ("started", f"{job_id}.started"),
        ("succeeded", f"{job_id}.succeeded")]


def test_a_rerouted_job_starts_once(env: dict[str, str], client: Client,
                                    receiver: Receiver) -> None:
    ep = endpoint(env, failure_rate=1.0)  # every GPU call fails: re-routed, then failed
    job_id = client.submit(ep, {"n": 5}, path="/x", webhook=receiver.url + "/reroute",
                           webhook_events=["started", "completed"])
    job = client.wait(job_id, timeout=60)
    assert job.status == "failed" and job.reroutes >= 2
    settled(client, job_id, f"{job_id}.failed")
    assert [e[0] for e in events(receiver, "/reroute")] == ["started", "failed"]


def test_unknown_event_is_refused(client: Client, receiver: Receiver) -> None:
    with pytest.raises(InvalidJob) as err:
        client.submit("ep", {}, path="/x", webhook=receiver.url, webhook_events=["begun"])
    assert err.value.field == "webhook_events" and "started" in str(err.value)


def in_order(statuses: list[str]) -> bool:
    return [ORDER.index(s) for s in statuses] == sorted(ORDER.index(s) for s in statuses)


def test_watch_shows_queued_waiting_running_done(env: dict[str, str], client: Client) -> None:
    ep = endpoint(env, workers=0, cold_start=1.5, latency={"kind": "fixed", "seconds": 0.8})
    job_id = client.submit(ep, {"n": 6}, path="/x")
    seen = list(client.watch(job_id, timeout=60))
    statuses = [j.status for j in seen]
    assert statuses[0] in ("queued", "waiting") and statuses[-1] == "succeeded"
    assert {"waiting", "running"} <= set(statuses) and in_order(statuses)
    waiting = next(j for j in seen if j.status == "waiting")
    assert waiting.wait_reason and waiting.wait_reason.startswith("no worker available")
    assert seen[-1].result["payload"] == {"n": 6}


def test_asyncio_watch(env: dict[str, str]) -> None:
    ep = endpoint(env, workers=0, cold_start=1.0, latency={"kind": "fixed", "seconds": 0.8})

    async def main() -> list[Any]:
        async with AsyncClient(Settings.from_env(env)) as c:
            job_id = await c.submit(ep, {"n": 7}, path="/x")
            return [j async for j in c.watch(job_id, timeout=60)]

    seen = asyncio.run(main())
    statuses = [j.status for j in seen]
    assert {"waiting", "running", "succeeded"} <= set(statuses) and in_order(statuses)
    assert statuses[-1] == "succeeded"


def test_watch_errors(env: dict[str, str], client: Client) -> None:
    with pytest.raises(JobNotFound):
        list(client.watch("nope-" + uuid.uuid4().hex))
    ep = endpoint(env, workers=0, cold_start=30)
    job_id = client.submit(ep, {"n": 8}, path="/x")
    seen = []
    with pytest.raises(WaitTimeout):
        for job in client.watch(job_id, timeout=1):
            seen.append(job.status)
    assert seen and seen[0] in ("queued", "waiting")
    client.cancel(job_id)
    assert [j.status for j in client.watch(job_id)] == ["cancelled"]
