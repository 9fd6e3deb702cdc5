"""Every route and worker status, through the client, against the emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.emulator import Emulator, EmulatorConfig
from dispatcher.errors import (
    RouteAuthError,
    RouteRateLimited,
    RouteRejected,
    RouteUnavailable,
    WorkerBadAnswer,
    WorkerRejected,
    WorkerSignatureRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from dispatcher.vast import Assignment, NoWorker, VastClient
from tests.poll import until

KEY = "client-vs-emulator-key"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def vast() -> Iterator[Emulator]:
    cfg = EmulatorConfig.from_dict({
        "api_key": KEY, "seed": 1,
        "endpoints": {
            "llm": {"workers": 1, "concurrency": 8, "queue_depth": 4,
                    "latency": {"kind": "fixed", "seconds": 0.01}},
            "cold": {"workers": 0, "max_workers": 1, "cold_start": 0.5,
                     "latency": {"kind": "fixed", "seconds": 0.01}},
            "busy": {"workers": 1, "concurrency": 1, "max_queue_time": 0.1,
                     "queue_depth": 3, "latency": {"kind": "fixed", "seconds": 0.5}},
            # Set up here, not by configure(): adding a ready worker at run time races
            # the emulator's own tick (seen failing ~1 in 15 runs).
            "gone": {"workers": 1},
            "warm": {"workers": 1, "warmup_errors": 2},
        },
    })
    with Emulator(cfg) as emulator:
        yield emulator


@pytest.fixture
def client(vast: Emulator) -> Iterator[VastClient]:
    c = VastClient(route_url=vast.route_url, api_key=KEY, max_result_bytes=50_000)
    yield c
    c.close()


def test_assignment_then_worker_success(client: VastClient) -> None:
    a = client.route("llm", 10)
    assert isinstance(a, Assignment)
    assert a.auth_data["endpoint"] == "llm" and a.auth_data["cost"] == 10
    resp = client.call_worker(a, "/v1/completions", {"id": "ok", "prompt": "hi"}, timeout=5)
    assert resp.status == 200 and resp.body["payload"] == {"id": "ok", "prompt": "hi"}
    assert resp.body["reqnum"] == a.reqnum and resp.body["worker"] == a.url


def test_cold_start_no_worker_keeps_request_idx_then_assigns(client: VastClient) -> None:
    first = client.route("cold", 1)
    assert isinstance(first, NoWorker) and "loading" in first.status
    assert first.request_idx is not None
    deadline = time.monotonic() + 30  # a 0.5 s cold start, on however busy a machine
    while True:
        time.sleep(0.1)
        second = client.route("cold", 1, request_idx=first.request_idx)
        if isinstance(second, Assignment) or time.monotonic() > deadline:
            break
        assert second.request_idx == first.request_idx  # still the same place in line
    assert isinstance(second, Assignment) and second.request_idx == first.request_idx


def test_route_400_and_401(vast: Emulator, client: VastClient) -> None:
    with pytest.raises(RouteRejected, match="400"):
        client.route("no-such-endpoint", 1)
    wrong = VastClient(route_url=vast.route_url, api_key="wrong-key")
    with pytest.raises(RouteAuthError) as e:
        wrong.route("llm", 1)
    assert e.value.status == 401 and "wrong-key" not in str(e.value)


def test_route_429_and_5xx_and_reset(vast: Emulator, client: VastClient) -> None:
    vast.configure({"route_429_rate": 1.0})
    try:
        with pytest.raises(RouteRateLimited) as e:
            client.route("llm", 1)
        assert e.value.text == "API requests too frequent"
    finally:
        vast.configure({"route_429_rate": 0.0})
    vast.configure({"route_error_rate": 1.0})
    try:
        with pytest.raises(RouteUnavailable) as e5:
            client.route("llm", 1)
        assert e5.value.status in (500, 502, 503)
    finally:
        vast.configure({"route_error_rate": 0.0})
    vast.configure({"route_reset_rate": 1.0})
    try:
        with pytest.raises(RouteUnavailable, match="connection failed"):
            client.route("llm", 1)
    finally:
        vast.configure({"route_reset_rate": 0.0})


def test_route_connection_refused() -> None:
    c = VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY)
    with pytest.raises(RouteUnavailable):
        c.route("llm", 1)


def test_replayed_assignment_is_refused_401(vast: Emulator, client: VastClient) -> None:
    a = client.route("llm", 1)
    client.call_worker(a, "/x", {"id": "first"}, timeout=5)
    before = vast.stats()["rejected_replay"]
    with pytest.raises(WorkerSignatureRejected) as e:
        client.call_worker(a, "/x", {"id": "replay"}, timeout=5)
    assert e.value.status == 401 and e.value.retryable
    assert vast.stats()["rejected_replay"] == before + 1
    assert "replay" not in vast.stats()["executions_by_payload"]


def test_tampered_assignment_is_refused_401(vast: Emulator, client: VastClient) -> None:
    a = client.route("llm", 1)
    forged = Assignment({**a.auth_data, "cost": 0})
    before = vast.stats()["rejected_tampered"]  # Vast signs only the url: the emulator's check
    with pytest.raises(WorkerSignatureRejected):
        client.call_worker(forged, "/x", {"id": "forged"}, timeout=5)
    assert vast.stats()["rejected_tampered"] == before + 1


def test_missing_auth_field_is_422(client: VastClient) -> None:
    a = client.route("llm", 1)
    partial = Assignment({k: v for k, v in a.auth_data.items() if k != "signature"})
    with pytest.raises(WorkerRejected) as e:
        client.call_worker(partial, "/x", {}, timeout=5)
    assert e.value.status == 422 and not e.value.retryable


@pytest.mark.parametrize(
    ("status", "error", "retryable", "meaning"),
    [(401, WorkerSignatureRejected, True, "assignment signature rejected"),
     (408, WorkerUnavailable, True, "request timeout"),
     (429, WorkerUnavailable, True, "busy"),
     (500, WorkerUnavailable, True, "worker error"),
     (503, WorkerUnavailable, True, "worker error"),
     (410, WorkerRejected, False, "unknown session"),
     (422, WorkerRejected, False, "malformed request"),
     (499, WorkerRejected, False, "client disconnected"),
     (404, WorkerRejected, False, "rejected")],
)
def test_worker_statuses(vast: Emulator, client: VastClient, status: int, error: type,
                         retryable: bool, meaning: str) -> None:
    """What the client makes of each status the emulated GPU answers: its error class, its
    retry decision (re-route, or fail the job), and its reading of the status, after one
    request (the GPU ran the payload once: no retry or redirect inside the client)."""
    pid = f"status-{status}-{time.monotonic_ns()}"
    a = client.route("llm", 1)
    with pytest.raises(error) as e:
        client.call_worker(a, "/x", {"id": pid, "emulate": {"status": status}}, 5)
    assert type(e.value) is error and e.value.status == status
    assert e.value.retryable is retryable
    assert f"{status} {meaning}" in str(e.value) and KEY not in repr(e.value)
    assert vast.stats()["executions_by_payload"][pid] == 1


def test_worker_text_timeout_and_huge(client: VastClient) -> None:
    a = client.route("llm", 1)
    assert client.call_worker(a, "/x", {"emulate": {"text": "words"}}, 5).body == "words"
    with pytest.raises(WorkerTimeout, match="may have done the work"):
        client.call_worker(client.route("llm", 1), "/x", {"emulate": {"hang": True}}, 0.5)
    with pytest.raises(WorkerBadAnswer):
        client.call_worker(client.route("llm", 1), "/x", {"emulate": {"size": 100_000}}, 5)


def test_admission_control_429_is_reroutable(vast: Emulator, client: VastClient) -> None:
    """One call holds the only slot (3 s); one that comes while it runs is refused 429."""
    import concurrent.futures

    answers = [client.route("busy", 1) for _ in range(2)]
    assert all(isinstance(a, Assignment) for a in answers)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(client.call_worker, answers[0], "/x",
                           {"id": "holds-the-slot", "emulate": {"sleep": 3}}, 10)
        deadline = time.monotonic() + 10
        while "holds-the-slot" not in vast.stats()["executions_by_payload"]:
            assert time.monotonic() < deadline and not busy.done(), busy
            time.sleep(0.02)
        with pytest.raises(WorkerUnavailable) as e:
            client.call_worker(answers[1], "/x", {"id": "refused"}, 5)
        assert e.value.status == 429 and e.value.retryable
        assert busy.result().status == 200


def test_stopped_worker_refuses_connection(vast: Emulator, client: VastClient) -> None:
    a = client.route("gone", 1)
    vast.configure({"action": "stop_all", "endpoint": "gone"})
    with pytest.raises(WorkerUnavailable, match="connection"):
        client.call_worker(a, "/x", {}, 5)


def test_route_token_bucket_429() -> None:
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "rate_limit": {"rate": 0.01, "burst": 2},
                                    "endpoints": {"llm": {"workers": 0, "cold_start": 60}}})
    with Emulator(cfg) as vast, VastClient(route_url=vast.route_url, api_key=KEY) as c:
        assert all(isinstance(c.route("llm", 1), NoWorker) for _ in range(2))
        with pytest.raises(RouteRateLimited) as e:
            c.route("llm", 1)
        assert e.value.status == 429 and e.value.retryable
        assert vast.stats()["route"]["rate_limited"] == 1


def test_slow_answer_within_and_past_the_timeout(vast: Emulator, client: VastClient) -> None:
    ok = client.call_worker(client.route("llm", 1), "/x",
                            {"id": "slow-ok", "emulate": {"sleep": 0.3}}, timeout=5)
    assert ok.status == 200 and ok.elapsed >= 0.3
    with pytest.raises(WorkerTimeout, match="may have done the work") as e:
        client.call_worker(client.route("llm", 1), "/x",
                           {"id": "slow-late", "emulate": {"sleep": 3}}, timeout=1.0)
    assert not e.value.retryable
    execs = until(lambda: vast.stats()["executions_by_payload"], lambda x: "slow-late" in x)
    assert execs["slow-late"] == 1  # it did run


def test_fail_once_then_reroute_succeeds(vast: Emulator, client: VastClient) -> None:
    payload = {"id": "flaky", "emulate": {"fail_times": 1}}
    with pytest.raises(WorkerUnavailable) as e:
        client.call_worker(client.route("llm", 1), "/x", payload, 5)
    assert e.value.status == 500
    resp = client.call_worker(client.route("llm", 1), "/x", payload, 5)
    assert resp.body["ok"] is True
    assert vast.stats()["executions_by_payload"]["flaky"] == 2


def test_just_started_worker_answers_401_then_500(client: VastClient) -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(WorkerUnavailable) as e:
            client.call_worker(client.route("warm", 1), "/x", {}, 5)
        errors.append(type(e.value))
    assert set(errors) == {WorkerSignatureRejected, WorkerUnavailable}
    assert client.call_worker(client.route("warm", 1), "/x", {}, 5).status == 200
