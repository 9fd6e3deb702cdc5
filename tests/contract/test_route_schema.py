"""Contract tests: Vast's published /route/ schema, and Vast's PyWorker's answers, through
the real path (a worker process, real Redis, the emulator over HTTP).

The shapes come from ../shared/vast-route-openapi.md (Vast's API reference, verbatim):
a worker assignment is {endpoint, url, cost, reqnum, signature, __request_id}; "no worker"
is {endpoint, status, __request_id}; 400 and 401 are {"error": ...}; 429 is plain text.
Each is played with every listed field, with each field absent in turn, and with unknown
extra fields. The emulated worker checks that what reaches it is the assignment it was
issued, verbatim, so a dispatcher that added, dropped or rewrote a field fails here.
The PyWorker answers are those of ../shared/vast-serverless.md section 6 (its 422 for an
assignment without request_idx is played by the real PyWorker in tests/pyworker).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.emulator import Emulator
from tests.e2e.conftest import add_endpoint

pytestmark = pytest.mark.timeout(120)

ASSIGNMENT_FIELDS = ("endpoint", "url", "cost", "reqnum", "signature", "__request_id")
NO_WORKER_FIELDS = ("endpoint", "status", "__request_id")
UNKNOWN = {"zz_new_field": {"nested": [1, None, "x"]}, "__debug": True}


def published(vast: Emulator, **config: Any) -> str:
    """An endpoint answering exactly the published shape (no request_idx anywhere)."""
    return add_endpoint(vast, **{"answer_shape": "published", "workers": 1, "max_workers": 1,
                                 **config})


def run(client: Client, ep: str, **submit: Any):  # noqa: ANN201
    payload = {"id": uuid.uuid4().hex, "prompt": "contract"}
    job = client.wait(client.submit(ep, payload, path="/v1/completions", max_wait=30,
                                    timeout=10, **submit), timeout=60)
    return job, payload


def assert_ran_once(vast: Emulator, job, payload: dict) -> None:  # noqa: ANN001
    assert job.status == "succeeded", job
    assert job.result["payload"] == payload
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1


@pytest.mark.parametrize("omit", [(), *((f,) for f in ASSIGNMENT_FIELDS if f != "url")],
                         ids=lambda o: f"without-{o[0]}" if o else "all-fields")
def test_a_published_assignment_with_any_field_absent_is_forwarded_verbatim(
        client: Client, vast: Emulator, omit: tuple[str, ...]) -> None:
    ep = published(vast)
    before = vast.stats()["workers"]
    vast.script_route(ep, [{"assign": True, "omit": list(omit)}])
    job, payload = run(client, ep)
    assert_ran_once(vast, job, payload)
    assert job.route_calls == 1
    after = vast.stats()["workers"]
    assert after["rejected_tampered"] == before["rejected_tampered"]  # verbatim
    assert after["malformed"] == before["malformed"]


def test_unknown_extra_fields_in_an_assignment_are_forwarded(client: Client,
                                                             vast: Emulator) -> None:
    ep = published(vast)
    before = vast.stats()["workers"]["rejected_tampered"]
    vast.script_route(ep, [{"assign": True, "extra": UNKNOWN}])
    job, payload = run(client, ep)
    assert_ran_once(vast, job, payload)
    assert vast.stats()["workers"]["rejected_tampered"] == before  # extras reached it


@pytest.mark.parametrize("omit", [(), *((f,) for f in NO_WORKER_FIELDS)],
                         ids=lambda o: f"without-{o[0]}" if o else "all-fields")
def test_a_no_worker_answer_of_any_shape_is_a_wait(client: Client, vast: Emulator,
                                                   omit: tuple[str, ...]) -> None:
    ep = published(vast)
    vast.script_route(ep, [{"no_worker": True, "omit": list(omit), "extra": UNKNOWN}] * 2)
    job, payload = run(client, ep)
    assert_ran_once(vast, job, payload)
    assert job.route_calls == 3  # two "not yet", then the assignment
    assert job.request_idx is None  # the published shape has none to keep


@pytest.mark.parametrize("body", [{"status": 7}, {"status": None}, {"status": ["a"]}, {}],
                         ids=["int", "null", "list", "empty"])
def test_a_no_worker_status_of_another_type_is_only_text(client: Client, vast: Emulator,
                                                         body: dict) -> None:
    ep = published(vast)
    vast.script_route(ep, [{"status": 200, "json": body}])
    job, payload = run(client, ep)
    assert_ran_once(vast, job, payload)
    assert job.route_calls == 2


def test_the_documented_400_fails_the_job_quoting_vast(client: Client, vast: Emulator) -> None:
    ep = published(vast)
    error = "Invalid endpoint or missing required parameters"
    vast.script_route(ep, [{"status": 400, "json": {"error": error}}])
    job, _ = run(client, ep)
    assert job.status == "failed" and job.error_kind == "route_rejected"
    assert error in job.error and job.route_calls == 1


def test_the_documented_401_fails_the_job_as_a_config_error(client: Client,
                                                            vast: Emulator) -> None:
    ep = published(vast)
    vast.script_route(ep, [{"status": 401, "json": {"error": "Authentication failed"}}])
    job, _ = run(client, ep)
    assert job.status == "failed" and job.error_kind == "route_auth"
    assert "Authentication failed" in job.error and job.route_calls == 1
    assert client.settings.vast_api_key not in job.error


def test_a_plain_text_429_is_a_delay(client: Client, vast: Emulator) -> None:
    ep = published(vast)
    vast.script_route(ep, [{"status": 429, "text": "API requests too frequent"}] * 2)
    job, payload = run(client, ep)
    assert_ran_once(vast, job, payload)
    assert job.route_calls == 3


# --- what Vast's PyWorker answers (../shared/vast-serverless.md section 6) --------------


def test_pyworker_401_with_an_empty_body_is_re_routed(client: Client, vast: Emulator) -> None:
    ep = published(vast)
    vast.script_route(ep, [{"assign": True, "extra": {"signature": "Zm9yZ2Vk"}}])  # forged
    job, payload = run(client, ep)
    assert_ran_once(vast, job, payload)
    assert job.reroutes == 1 and job.route_calls == 2


@pytest.mark.parametrize(("status", "kind", "reroutes"),
                         [(429, "worker_failed", 4), (499, "worker_rejected", 0)])
def test_pyworker_429_is_re_routed_and_499_is_final(client: Client, vast: Emulator,
                                                    status: int, kind: str,
                                                    reroutes: int) -> None:
    """429: its queue is over max_queue_time, another worker may take it (re-routed, up to
    DISPATCHER_MAX_REROUTES=3 here). 499: the client went away; final."""
    ep = published(vast, workers=2, max_workers=2)
    payload = {"id": uuid.uuid4().hex, "emulate": {"status": status}}
    job = client.wait(client.submit(ep, payload, path="/x", max_wait=30, timeout=10),
                      timeout=60)
    assert job.status == "failed" and job.error_kind == kind, job
    assert job.worker_status == status and job.reroutes == reroutes
    assert f"emulated status {status}" in job.error
