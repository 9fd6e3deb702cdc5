"""Bad input ends `failed` with a reason naming the field, never crashing a worker;
the API key never reaches Redis, logs, stored errors or exception messages."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.errors import InvalidJob
from dispatcher.store.keys import job_key

from .harness import API_KEY, Cluster

pytestmark = pytest.mark.timeout(300)

ENDPOINTS = {"ep": {"workers": 2, "max_workers": 2, "concurrency": 8,
                    "latency": {"kind": "fixed", "seconds": 0.02}}}


class BadRouter(BaseHTTPRequestHandler):
    """A broken routing API: assignments we must refuse to forward."""

    answers = {
        "ftp-url": {"url": "ftp://1.2.3.4:21", "endpoint": "e", "cost": 1, "reqnum": 1,
                    "signature": "s", "request_idx": 1},
        "no-host": {"url": "http://", "endpoint": "e", "cost": 1, "reqnum": 1,
                    "signature": "s", "request_idx": 1},
        # (Missing fields are forwarded, as Vast's schema allows: tests/contract covers it.)
        "url-not-a-string": {"url": ["http://127.0.0.1:9"], "endpoint": "e"},
    }

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = json.dumps(self.answers[body["endpoint"]]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    env = {"DISPATCHER_MAX_RESULT_BYTES": "100000"}
    with Cluster(ENDPOINTS, env=env).start(workers=0) as c:
        c.add_worker(concurrency=16, loglevel="DEBUG")
        yield c


def test_submit_refuses_bad_input_naming_the_field(cluster: Cluster) -> None:
    client = cluster.client
    cases = [
        ({"endpoint": ""}, "endpoint"),
        ({"endpoint": None}, "endpoint"),
        ({"cost": -1}, "cost"),
        ({"cost": math.nan}, "cost"),
        ({"cost": "64"}, "cost"),
        ({"payload": {"f": object()}}, "payload"),
        ({"payload": {"x": "a" * (10 * 1024 * 1024 + 1)}}, "payload"),
        ({"path": "generate"}, "path"),
        ({"path": "https://evil.example/x"}, "path"),
        ({"max_wait": 0}, "max_wait"),
        ({"timeout": -1}, "timeout"),
    ]
    for override, field in cases:
        args = {"endpoint": "ep", "payload": {"id": "x"}, "path": "/x", "cost": 1.0, **override}
        with pytest.raises(InvalidJob) as e:
            client.submit(args.pop("endpoint"), args.pop("payload"), **args)
        assert e.value.field == field, (override, e.value)
    assert client.get_job("no-such-id").status == "unknown"


def test_a_corrupt_job_record_fails_with_the_field_named(cluster: Cluster) -> None:
    client = cluster.client
    job_id = client.submit("ep", {"id": uuid.uuid4().hex}, path="/x")
    client.wait(job_id, timeout=30)
    bad = f"corrupt-{uuid.uuid4().hex}"
    # What a buggy writer might leave: a job whose cost is not a number.
    assert client.store.create(bad, {"status": "queued", "endpoint": "ep", "cost": "lots",
                                     "path": "/x", "payload": "{}", "max_wait": 30,
                                     "timeout": 5}, grace=0)
    job = client.wait(bad, timeout=30)
    assert job.status == "failed" and job.error_kind == "invalid_input"
    assert "cost" in job.error


def test_bad_worker_answers(cluster: Cluster) -> None:
    client = cluster.client
    text = client.wait(client.submit("ep", {"id": uuid.uuid4().hex,
                                            "emulate": {"text": "plain words"}}, path="/x"), 30)
    assert text.status == "succeeded" and text.result == "plain words"
    huge = client.wait(client.submit("ep", {"id": uuid.uuid4().hex,
                                            "emulate": {"size": 500_000}}, path="/x"), 30)
    assert huge.status == "failed" and huge.error_kind == "worker_bad_answer"
    assert "DISPATCHER_MAX_RESULT_BYTES" in huge.error
    rejected = client.wait(client.submit("ep", {"id": uuid.uuid4().hex,
                                                "emulate": {"status": 422}}, path="/x"), 30)
    assert rejected.status == "failed" and rejected.error_kind == "worker_rejected"
    assert all(w.alive() for w in cluster.workers)


def test_bad_route_answers_fail_the_job(cluster: Cluster) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BadRouter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    queue = f"bad-{uuid.uuid4().hex[:6]}"
    env = {"VAST_ROUTE_URL": f"http://127.0.0.1:{server.server_port}/route/",
           "DISPATCHER_QUEUE": queue}
    worker = cluster.add_worker(concurrency=4, env=env)
    client = Client(Settings.from_env({**cluster.env, **env}))
    try:
        for endpoint in BadRouter.answers:
            job = client.wait(client.submit(endpoint, {"id": endpoint}, path="/x"), timeout=30)
            assert job.status == "failed" and job.error_kind == "route_bad_answer", job
        assert worker.alive()
    finally:
        client.close()
        server.shutdown()


def test_wrong_api_key_fails_every_job_fast_with_one_message(cluster: Cluster) -> None:
    queue = f"wrongkey-{uuid.uuid4().hex[:6]}"
    env = {"VAST_API_KEY": "not-the-right-key", "DISPATCHER_QUEUE": queue}
    cluster.add_worker(concurrency=8, env=env)
    client = Client(Settings.from_env({**cluster.env, **env}))
    try:
        ids = [client.submit("ep", {"id": uuid.uuid4().hex}, path="/x") for _ in range(50)]
        jobs = [client.wait(i, timeout=30) for i in ids]
    finally:
        client.close()
    assert {j.status for j in jobs} == {"failed"}
    assert {j.error_kind for j in jobs} == {"route_auth"}
    assert all(j.route_calls == 1 for j in jobs)  # no retry storm
    assert "not-the-right-key" not in jobs[0].error and "401" in jobs[0].error


def test_the_api_key_is_nowhere(cluster: Cluster) -> None:
    """Run after the others in this module: scans everything they left behind."""
    client = cluster.client
    ids = [client.submit("ep", {"id": uuid.uuid4().hex}, path="/x") for _ in range(20)]
    ids.append(client.submit("no-such-endpoint", {"id": "x"}, path="/x"))
    for job_id in ids:
        client.wait(job_id, timeout=30)
    r = redis.Redis.from_url(cluster.redis.url)
    secrets = [API_KEY.encode(), b"not-the-right-key"]
    scanned = 0
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values = [r.get(key)]
        elif kind == "hash":
            values = [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        scanned += 1
        for blob in [key, *values]:
            assert not any(s in (blob or b"") for s in secrets), key
    assert scanned > 20 and r.exists(job_key(ids[0]))
    for w in cluster.workers:  # DEBUG-level logs included
        log = w.log_text()
        assert "fault-suite-key" not in log and "not-the-right-key" not in log
        assert log  # the logs were really read
