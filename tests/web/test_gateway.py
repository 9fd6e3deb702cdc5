"""The HTTP gateway over real HTTP: a running `dispatcher gateway` process, a real worker,
Redis and the emulator; every answer checked against GET /openapi.json; a Node.js client."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator

from dispatcher.dev.procs import Child
from dispatcher.emulator import Emulator
from dispatcher.model import Job
from dispatcher.store import keys

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(180)

TOKEN = "gw-test-token-" + uuid.uuid4().hex
HERE = Path(__file__).parent
# Every answer the tests got: (path template, method, status, body), checked at the end.
SEEN: list[tuple[str, str, int, Any]] = []


def start_gateway(env: dict[str, str], *args: str) -> tuple[Child, str]:
    child = Child("gateway", [sys.executable, "-m", "dispatcher", "gateway", "--port", "0",
                              *args], {**os.environ, **env})
    child.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in child.log_text().splitlines():
            if line.startswith("dispatcher gateway on "):
                return child, line.split()[3]
        if not child.alive():
            break
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"gateway did not start:\n{child.log_text()[-3000:]}")


@pytest.fixture(scope="module")
def gateway(e2e_env: dict[str, str], worker: Any) -> Iterator[str]:
    child, url = start_gateway({**e2e_env, "DISPATCHER_GATEWAY_TOKEN": TOKEN,
                                "DISPATCHER_GATEWAY_MAX_BODY": str(256 * 1024),
                                "DISPATCHER_GATEWAY_MAX_WAIT": "20"})
    yield url
    child.stop()
    logs = child.log_text()
    assert TOKEN not in logs and e2e_env["VAST_API_KEY"] not in logs


class Api:
    """requests against the gateway; records every answer for the OpenAPI check."""

    def __init__(self, url: str, token: str | None = TOKEN) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __call__(self, method: str, path: str, template: str | None = None,
                 **kw: Any) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        r = requests.request(method, self.url + path, headers=headers, timeout=60, **kw)
        assert r.headers["Content-Type"].startswith("application/json"), r.text
        SEEN.append((template or path.split("?")[0], method.lower(), r.status_code, r.json()))
        return r


@pytest.fixture(scope="module")
def api(gateway: str) -> Api:
    return Api(gateway)


def payload() -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "prompt": "hi"}


def test_submit_long_poll_and_read_the_result(api: Api, vast: Emulator) -> None:
    ep = add_endpoint(vast, latency={"kind": "fixed", "seconds": 0.5})
    p = payload()
    r = api("POST", "/v1/jobs", json={"endpoint": ep, "payload": p, "path": "/v1/completions",
                                      "cost": 7, "priority": 2})
    assert r.status_code == 201 and r.json() == {"id": r.json()["id"], "status": "queued"}
    job_id = r.json()["id"]
    assert r.headers["Location"] == f"/v1/jobs/{job_id}"
    job = api("GET", f"/v1/jobs/{job_id}?wait=15", "/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["result"]["payload"] == p
    assert job["cost"] == 7 and job["priority"] == 2 and "payload" not in job
    assert api("GET", f"/v1/jobs/{job_id}", "/v1/jobs/{job_id}").json() == job
    assert vast.stats()["executions_by_payload"][p["id"]] == 1


def test_a_repeated_job_id_answers_200_with_the_existing_job(api: Api, vast: Emulator
                                                             ) -> None:
    ep = add_endpoint(vast)
    jid = f"gw-{uuid.uuid4().hex}"
    body = {"endpoint": ep, "payload": payload(), "path": "/x", "job_id": jid}
    first = api("POST", "/v1/jobs", json=body)
    api("GET", f"/v1/jobs/{jid}?wait=15", "/v1/jobs/{job_id}")
    again = api("POST", "/v1/jobs", json={**body, "payload": payload()})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {"id": jid, "status": "succeeded"}


def test_batch(api: Api, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    jobs = [{"endpoint": ep, "payload": payload(), "path": "/x"} for _ in range(30)]
    r = api("POST", "/v1/jobs/batch", json={"jobs": jobs})
    assert r.status_code == 201 and len(r.json()["ids"]) == 30
    done = [api("GET", f"/v1/jobs/{i}?wait=15", "/v1/jobs/{job_id}").json()
            for i in r.json()["ids"]]
    assert [d["result"]["payload"] for d in done] == [j["payload"] for j in jobs]


def test_bad_input_is_400_or_422_naming_the_field(api: Api, client: Any) -> None:
    ep = "never-" + uuid.uuid4().hex[:6]
    good = {"endpoint": ep, "payload": {}, "path": "/x"}
    cases = [
        (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, "body"),
        (dict(json=[1, 2]), 422, "body"),
        (dict(json={**good, "cost": -1}), 422, "cost"),
        (dict(json={**good, "colour": "red"}), 422, "colour"),
        (dict(json={"endpoint": ep, "path": "/x"}), 422, "payload"),
        (dict(json={**good, "priority": "high"}), 422, "priority"),
        (dict(json={**good, "webhook": "http://x.test/h", "webhook_events": ["begun"]}), 422,
         "webhook_events"),
    ]
    for kw, status, field in cases:
        r = api("POST", "/v1/jobs", **kw)
        assert r.status_code == status, (kw, r.text)
        assert r.json()["field"].startswith(field) and field in r.json()["error"], r.text
    jid = f"never-written-{uuid.uuid4().hex}"
    batch = [{**good, "job_id": jid}, {**good, "cost": -1}]
    r = api("POST", "/v1/jobs/batch", json={"jobs": batch})
    assert r.status_code == 422 and r.json()["field"] == "jobs[1].cost"
    assert r.json()["error"] == "jobs[1].cost: must be >= 0, got -1"
    assert not client.store.redis.exists(keys.job_key(jid))  # nothing written
    r = api("POST", "/v1/jobs/batch", json={"jobz": []})
    assert r.status_code == 422 and r.json()["field"] == "body"
    r = api("GET", "/v1/jobs/abc?wait=soon", "/v1/jobs/{job_id}")
    assert r.status_code == 400 and r.json()["field"] == "wait"
    r = api("GET", "/v1/jobs/abc?wait=-1", "/v1/jobs/{job_id}")
    assert r.status_code == 400 and r.json()["field"] == "wait"
    r = api("GET", "/v1/jobs/a%20b", "/v1/jobs/{job_id}")
    assert r.status_code == 400 and r.json()["field"] == "id"


def test_body_size_limit(api: Api) -> None:
    big = {"endpoint": "ep", "path": "/x", "payload": "x" * (300 * 1024)}
    r = api("POST", "/v1/jobs", json=big)
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert "DISPATCHER_GATEWAY_MAX_BODY" in r.json()["error"]


def test_unknown_ids_routes_and_methods(api: Api) -> None:
    nope = "nope-" + uuid.uuid4().hex
    r = api("GET", f"/v1/jobs/{nope}", "/v1/jobs/{job_id}")
    assert r.status_code == 404 and r.json()["field"] == "id"
    r = api("GET", f"/v1/jobs/{nope}?wait=1", "/v1/jobs/{job_id}")
    assert r.status_code == 404
    r = api("POST", f"/v1/jobs/{nope}/cancel", "/v1/jobs/{job_id}/cancel")
    assert r.status_code == 404
    assert api("GET", "/v2/nothing").status_code == 404
    r = api("DELETE", "/v1/jobs")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]


def test_long_poll_returns_the_job_as_it_is_when_the_wait_runs_out(api: Api, vast: Emulator
                                                                   ) -> None:
    ep = add_endpoint(vast, workers=0, max_workers=1, cold_start=60)
    job_id = api("POST", "/v1/jobs", json={"endpoint": ep, "payload": {}, "path": "/x"}
                 ).json()["id"]
    r = api("GET", f"/v1/jobs/{job_id}?wait=0.5", "/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] in ("queued", "waiting")
    c = api("POST", f"/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/cancel")
    assert c.json() == {"id": job_id, "cancelled": True, "status": "cancelled"}
    c = api("POST", f"/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/cancel")
    assert c.json() == {"id": job_id, "cancelled": False, "status": "cancelled"}


def test_a_streaming_job_as_server_sent_events(api: Api, gateway: str, vast: Emulator) -> None:
    import sseclient

    from dispatcher.emulator import expected_stream

    ep = add_endpoint(vast)
    job_payload = {**payload(), "emulate": {"stream": {"pieces": 6, "interval": 0.05}}}
    job_id = api("POST", "/v1/jobs", json={"endpoint": ep, "payload": job_payload,
                                            "path": "/v1/completions", "stream": True}
                 ).json()["id"]
    r = requests.get(f"{gateway}/v1/jobs/{job_id}/stream", headers=api.headers, stream=True,
                     timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = list(sseclient.SSEClient(r.iter_content(chunk_size=None)).events())
    assert [e.data for e in events[:-1]] == expected_stream(job_payload).pieces
    assert events[-1].event == "end" and json.loads(events[-1].data) == {"status": "succeeded"}
    SEEN.append(("/v1/jobs/{job_id}/stream", "get", 200, "".join(e.data for e in events)))
    unknown = api("GET", "/v1/jobs/nope-nope/stream", "/v1/jobs/{job_id}/stream")
    assert unknown.status_code == 404 and unknown.json()["field"] == "id"


def test_stats_and_healthz(api: Api, gateway: str) -> None:
    stats = api("GET", "/v1/stats").json()
    assert stats["endpoints"] and all("waiting" in v for v in stats["endpoints"].values())
    assert Api(gateway, token=None)("GET", "/healthz").json() == {"ok": True}


def test_auth(gateway: str) -> None:
    for token in (None, "wrong-" + TOKEN, TOKEN[:-1]):
        r = Api(gateway, token)("GET", "/v1/stats")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.get(gateway + "/v1/stats", headers={"Authorization": f"Basic {TOKEN}"},
                     timeout=10)
    assert r.status_code == 401
    r = Api(gateway, None)("POST", "/v1/jobs", json={"endpoint": "x", "payload": 1,
                                                     "path": "/x"})
    assert r.status_code == 401  # checked before the body is even read
    assert Api(gateway, None)("GET", "/openapi.json").status_code == 200


def test_never_the_api_key_nor_another_jobs_data(api: Api, e2e_env: dict[str, str]) -> None:
    key = e2e_env["VAST_API_KEY"]
    assert all(key not in json.dumps(body) for *_, body in SEEN)
    views = [b for (path, m, s, b) in SEEN if path == "/v1/jobs/{job_id}" and s == 200]
    shown = {f.name for f in dataclasses.fields(Job)}  # the job's own view, no payload
    assert views and all(set(b) == shown for b in views)


def test_node_client_submits_long_polls_and_reads_the_result(gateway: str, vast: Emulator
                                                             ) -> None:
    node = shutil.which("node")
    assert node, "node is needed for this test (node 20+: built-in fetch)"
    ep = add_endpoint(vast, latency={"kind": "fixed", "seconds": 0.3})
    out = subprocess.run([node, str(HERE / "client.mjs"), "hello from node"],
                         env={**os.environ, "GATEWAY_URL": gateway, "ENDPOINT": ep,
                              "DISPATCHER_GATEWAY_TOKEN": TOKEN},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["status"] == "succeeded"
    assert doc["result"]["payload"] == {"prompt": "hello from node", "max_tokens": 16}
    assert doc["result"]["path"] == "/v1/completions"


def test_refuses_to_start_unsafely(e2e_env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "dispatcher", "gateway", "--port", "0"]
    env = {k: v for k, v in {**os.environ, **e2e_env}.items()
           if k != "DISPATCHER_GATEWAY_TOKEN"}
    for args, extra, message in [
        ([], {}, "DISPATCHER_GATEWAY_TOKEN is not set"),
        (["--host", "0.0.0.0", "--no-auth"], {}, "only on a loopback address"),
        ([], {"DISPATCHER_GATEWAY_TOKEN": "short"}, "at least 16 characters"),
    ]:
        out = subprocess.run(cmd + args, env={**env, **extra}, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert "short" not in out.stderr.replace("characters", "")


def test_no_auth_on_loopback(e2e_env: dict[str, str], worker: Any, vast: Emulator) -> None:
    env = {k: v for k, v in e2e_env.items() if k != "DISPATCHER_GATEWAY_TOKEN"}
    child, url = start_gateway(env, "--no-auth")
    try:
        assert "NO AUTH" in child.log_text()
        ep = add_endpoint(vast)
        api = Api(url, token=None)
        job_id = api("POST", "/v1/jobs", json={"endpoint": ep, "payload": {}, "path": "/x"}
                     ).json()["id"]
        job = api("GET", f"/v1/jobs/{job_id}?wait=15", "/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"
    finally:
        child.stop()


def schema_for(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    responses = doc["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, undocumented"
    content = responses[str(status)]["content"]
    return (content.get("application/json") or content["text/event-stream"])["schema"]


def test_every_answer_matches_the_openapi_document(gateway: str) -> None:
    """Last: every answer the tests above got, against the served document."""
    doc = requests.get(gateway + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})
    from dispatcher.submission import SUBMIT_FIELDS

    submit = doc["components"]["schemas"]["SubmitRequest"]
    assert set(submit["properties"]) == set(SUBMIT_FIELDS)
    covered = set()
    for path, method, status, body in SEEN:
        if path not in doc["paths"]:
            assert status == 404, (path, status)
            continue
        if method not in doc["paths"][path]:
            assert status == 405, (path, method, status)
            continue
        schema = schema_for(doc, path, method, status)
        validator = Draft202012Validator({**schema, "components": doc["components"]})
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (path, method, status, body, errors)
        covered.add((path, method))
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert documented == covered, documented - covered
