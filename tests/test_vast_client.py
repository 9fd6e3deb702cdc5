"""The route and worker client, one test per status, with `responses` (no network)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from dispatcher.vast import (
    Assignment,
    NoWorker,
    RouteAuthError,
    RouteBadAnswer,
    RouteRateLimited,
    RouteRejected,
    RouteUnavailable,
    VastClient,
    VastError,
    WorkerBadAnswer,
    WorkerRejected,
    WorkerSignatureRejected,
    WorkerTimeout,
    WorkerUnavailable,
    redact,
)

KEY = "sk-test-0123456789abcdef"
ROUTE = "https://run.example/route/"
WORKER = "https://1.2.3.4:40123"
ASSIGNMENT = {"endpoint": "llm", "url": WORKER, "cost": 64, "reqnum": 7, "signature": "sig",
              "request_idx": 3, "__request_id": "r1"}


@pytest.fixture
def client() -> VastClient:
    return VastClient(route_url=ROUTE, api_key=KEY, max_result_bytes=1000)


def assert_no_secret(e: BaseException) -> None:
    for text in (str(e), repr(e), repr(e.args), getattr(e, "text", "")):
        assert KEY not in text
    assert e.__cause__ is None
    if e.__context__ is not None:  # a requests error may be chained: it must be clean too
        assert KEY not in str(e.__context__)


@responses.activate
def test_route_assignment_is_kept_verbatim(client: VastClient) -> None:
    responses.post(ROUTE, json=ASSIGNMENT)
    a = client.route("llm", 64.0)
    assert isinstance(a, Assignment) and a.auth_data == ASSIGNMENT
    assert (a.url, a.reqnum, a.request_idx) == (WORKER, 7, 3)
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.body) == {"endpoint": "llm", "cost": 64.0, "replay_timeout": 60.0}


@responses.activate
def test_route_no_worker_keeps_status_and_request_idx(client: VastClient) -> None:
    responses.post(ROUTE, json={"endpoint": "llm", "status": "2 loading, 0 idle",
                                "__request_id": "x", "request_idx": 9})
    answer = client.route("llm", 1.0, request_idx=9)
    assert answer == NoWorker(status="2 loading, 0 idle", request_idx=9, endpoint="llm")
    assert json.loads(responses.calls[0].request.body)["request_idx"] == 9


@responses.activate
def test_route_no_worker_with_structured_status(client: VastClient) -> None:
    responses.post(ROUTE, json={"endpoint": "llm", "status": {"loading": 2}})
    answer = client.route("llm", 1.0)
    assert isinstance(answer, NoWorker) and json.loads(answer.status) == {"loading": 2}
    assert answer.request_idx is None


@pytest.mark.parametrize(
    ("status", "body", "error", "retryable"),
    [
        (400, {"error": "endpoint not found"}, RouteRejected, False),
        (401, {"error": "bad key"}, RouteAuthError, False),
        (429, "API requests too frequent", RouteRateLimited, True),
        (500, "oops", RouteUnavailable, True),
        (502, "bad gateway", RouteUnavailable, True),
        (503, "", RouteUnavailable, True),
        (200, "<html>proxy</html>", RouteUnavailable, True),
    ],
)
@responses.activate
def test_route_error_statuses(client: VastClient, status, body, error, retryable) -> None:
    kwargs = {"json": body} if isinstance(body, dict) else {"body": body}
    responses.post(ROUTE, status=status, **kwargs)
    with pytest.raises(error) as e:
        client.route("llm", 1.0)
    assert e.value.retryable is retryable and e.value.status == status
    if isinstance(body, dict):
        assert body["error"] in str(e.value)
    assert "'llm'" in str(e.value)
    assert_no_secret(e.value)


@responses.activate
def test_route_connection_error_and_timeout(client: VastClient) -> None:
    responses.post(ROUTE, body=requests.ConnectionError(f"reset; key={KEY}"))
    with pytest.raises(RouteUnavailable) as e:
        client.route("llm", 1.0)
    assert_no_secret(e.value)
    responses.replace(responses.POST, ROUTE, body=requests.ReadTimeout("slow"))
    with pytest.raises(RouteUnavailable, match="no answer within"):
        client.route("llm", 1.0)


@pytest.mark.parametrize(
    "answer",
    [
        {**ASSIGNMENT, "url": "ftp://1.2.3.4:21"},
        {**ASSIGNMENT, "url": "http://"},
        {**ASSIGNMENT, "url": 5},
        {"url": WORKER, "endpoint": "llm"},
    ],
)
@responses.activate
def test_route_bad_assignment_is_refused(client: VastClient, answer) -> None:
    responses.post(ROUTE, json=answer)
    with pytest.raises(RouteBadAnswer) as e:
        client.route("llm", 1.0)
    assert not e.value.retryable


def test_route_without_key_names_the_setting() -> None:
    c = VastClient(route_url=ROUTE, api_key=None)
    with pytest.raises(RouteAuthError, match="VAST_API_KEY"):
        c.route("llm", 1.0)


@responses.activate
def test_server_echoing_the_key_is_redacted(client: VastClient) -> None:
    responses.post(ROUTE, status=401, json={"error": f"key {KEY} is revoked"})
    with pytest.raises(RouteAuthError) as e:
        client.route("llm", 1.0)
    assert "***" in str(e.value)
    assert_no_secret(e.value)


@responses.activate
def test_worker_call_forwards_auth_data_verbatim_without_the_key(client: VastClient) -> None:
    responses.post(WORKER + "/v1/completions", json={"text": "hi"})
    resp = client.call_worker(Assignment(ASSIGNMENT), "/v1/completions", {"p": 1}, timeout=5)
    assert resp.status == 200 and resp.body == {"text": "hi"}
    sent = responses.calls[0].request
    assert json.loads(sent.body) == {"auth_data": ASSIGNMENT, "payload": {"p": 1},
                                     "session_id": None}
    assert "Authorization" not in sent.headers


@responses.activate
def test_worker_text_answer_stays_text(client: VastClient) -> None:
    responses.post(WORKER + "/generate", body="plain words", content_type="text/plain")
    assert client.call_worker(Assignment(ASSIGNMENT), "/generate", {}, 5).body == "plain words"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, WorkerSignatureRejected),
        (408, WorkerUnavailable),
        (429, WorkerUnavailable),
        (500, WorkerUnavailable),
        (503, WorkerUnavailable),
        (410, WorkerRejected),
        (422, WorkerRejected),
        (499, WorkerRejected),
        (404, WorkerRejected),
    ],
)
@responses.activate
def test_worker_statuses(client: VastClient, status, error) -> None:
    responses.post(WORKER + "/x", status=status, body=f"worker says {status}")
    with pytest.raises(error) as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert e.value.status == status and f"worker says {status}" in str(e.value)
    assert e.value.retryable is issubclass(error, WorkerUnavailable)


@responses.activate
def test_worker_connection_refused_is_reroutable(client: VastClient) -> None:
    responses.post(WORKER + "/x", body=requests.ConnectionError("refused"))
    with pytest.raises(WorkerUnavailable):
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)


@responses.activate
def test_worker_read_timeout_says_the_gpu_may_have_run(client: VastClient) -> None:
    responses.post(WORKER + "/x", body=requests.ReadTimeout("slow"))
    with pytest.raises(WorkerTimeout) as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert "may have done the work" in str(e.value) and not e.value.retryable


@responses.activate
def test_worker_huge_answer_is_refused(client: VastClient) -> None:
    responses.post(WORKER + "/x", body="x" * 5000)
    with pytest.raises(WorkerBadAnswer, match="DISPATCHER_MAX_RESULT_BYTES"):
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)


def test_worker_path_and_url_are_checked(client: VastClient) -> None:
    with pytest.raises(ValueError, match="path"):
        client.call_worker(Assignment(ASSIGNMENT), "v1", {}, 5)
    with pytest.raises(RouteBadAnswer):
        client.call_worker(Assignment({**ASSIGNMENT, "url": "file:///etc"}), "/x", {}, 5)


def test_insecure_tls_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.vast"):
        VastClient(route_url=ROUTE, api_key=KEY, insecure_worker_tls=True)
    assert any("NOT verified" in r.message for r in caplog.records)


@responses.activate
def test_key_never_logged_even_at_debug(client: VastClient,
                                        caplog: pytest.LogCaptureFixture) -> None:
    responses.post(ROUTE, status=401, json={"error": f"bad {KEY}"})
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(VastError):
            client.route("llm", 1.0)
    assert KEY not in caplog.text


def test_redact() -> None:
    assert redact(f"a {KEY} b {KEY}", KEY) == "a *** b ***"
    assert redact("nothing", None) == "nothing"


class SlowDrip(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "100")
        self.end_headers()
        for _ in range(100):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


def test_real_server_reset_and_slow_drip() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowDrip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    client = VastClient(route_url=ROUTE, api_key=KEY)
    a = Assignment({**ASSIGNMENT, "url": url})
    try:
        with pytest.raises(WorkerUnavailable):
            client.call_worker(a, "/reset", {}, 5)
        started = time.monotonic()
        with pytest.raises(WorkerTimeout):  # each read is fast, the whole answer is not
            client.call_worker(a, "/drip", {}, timeout=1.0)
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()
