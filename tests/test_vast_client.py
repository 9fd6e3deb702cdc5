"""The route and worker client: every status with `responses`, then a real local server."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from dispatcher.config import Settings
from dispatcher.errors import (
    RouteAuthError,
    RouteBadAnswer,
    RouteRateLimited,
    RouteRejected,
    RouteUnavailable,
    VastError,
    WorkerBadAnswer,
    WorkerRejected,
    WorkerSignatureRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from dispatcher.vast import Assignment, NoWorker, VastClient, redact

KEY = "sk-test-0123456789abcdef"
ROUTE = "https://run.example/route/"
WORKER = "https://1.2.3.4:40123"
ASSIGNMENT = {"endpoint": "llm", "url": WORKER, "cost": 64, "reqnum": 7, "signature": "sig",
              "request_idx": 3, "__request_id": "r1"}


@pytest.fixture
def client() -> Iterator[VastClient]:
    c = VastClient(route_url=ROUTE, api_key=KEY, max_result_bytes=1000)
    yield c
    c.close()


def assert_no_secret(e: BaseException) -> None:
    assert isinstance(e, VastError)
    assert e.__cause__ is None and e.__context__ is None
    printed = "".join(traceback.format_exception(e))
    for text in (str(e), repr(e), repr(e.args), e.text, printed, repr(pickle.dumps(e))):
        assert KEY not in text


# --- route ------------------------------------------------------------------------------


@responses.activate
def test_route_assignment_is_kept_verbatim(client: VastClient) -> None:
    responses.post(ROUTE, json=ASSIGNMENT)
    a = client.route("llm", 64.0)
    assert isinstance(a, Assignment) and a.auth_data == ASSIGNMENT
    assert (a.url, a.reqnum, a.request_idx) == (WORKER, 7, 3)
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.body) == {"endpoint": "llm", "cost": 64.0, "replay_timeout": 60.0}
    assert sent.req_kwargs["timeout"] == (5.0, 10.0)


# The published schema (../shared/vast-route-openapi.md) lists no request_idx; any field
# may be absent, and unknown ones may appear: all are forwarded untouched.
PUBLISHED = {k: v for k, v in ASSIGNMENT.items() if k != "request_idx"}


@pytest.mark.parametrize(
    "answer",
    [PUBLISHED, {"url": WORKER}, {**ASSIGNMENT, "zz_new": {"nested": [1, None]}},
     *({k: v for k, v in PUBLISHED.items() if k != drop} for drop in PUBLISHED if drop != "url")],
    ids=lambda a: ",".join(sorted(a)),
)
@responses.activate
def test_route_assignment_of_any_shape_with_a_url_is_forwarded_verbatim(
        client: VastClient, answer: dict) -> None:
    responses.post(ROUTE, json=answer)
    a = client.route("llm", 64.0)
    assert isinstance(a, Assignment) and a.auth_data == answer
    assert a.request_idx == answer.get("request_idx")
    assert a.reqnum == answer.get("reqnum")


@responses.activate
def test_route_no_worker_keeps_status_and_request_idx(client: VastClient) -> None:
    responses.post(ROUTE, json={"endpoint": "llm", "status": "2 loading, 0 idle",
                                "__request_id": "x", "request_idx": 9})
    answer = client.route("llm", 1.0, request_idx=9)
    assert answer == NoWorker(status="2 loading, 0 idle", request_idx=9, endpoint="llm")
    assert json.loads(responses.calls[0].request.body) == {
        "endpoint": "llm", "cost": 1.0, "request_idx": 9, "replay_timeout": 60.0}


@responses.activate
def test_route_request_idx_zero_is_sent(client: VastClient) -> None:
    responses.post(ROUTE, json={"status": "Stopped"})
    client.route("llm", 1.0, request_idx=0)
    assert json.loads(responses.calls[0].request.body)["request_idx"] == 0


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"endpoint": "llm", "status": {"loading": 2}}, NoWorker("{'loading': 2}", None, "llm")),
        ({"status": 3, "request_idx": True}, NoWorker("3")),
        ({"endpoint": "llm"}, NoWorker("", None, "llm")),
        ({}, NoWorker("")),
    ],
)
@responses.activate
def test_route_no_worker_odd_shapes(client: VastClient, answer, expected) -> None:
    responses.post(ROUTE, json=answer)
    assert client.route("llm", 1.0) == expected


@pytest.mark.parametrize(
    ("status", "body", "error", "retryable"),
    [
        (400, {"error": "endpoint not found"}, RouteRejected, False),
        (401, {"error": "bad key"}, RouteAuthError, False),
        (429, "API requests too frequent", RouteRateLimited, True),
        (500, "oops", RouteUnavailable, True),
        (502, "bad gateway", RouteUnavailable, True),
        (503, "", RouteUnavailable, True),
        (404, "not found", RouteUnavailable, True),
        (200, "<html>proxy</html>", RouteUnavailable, True),
        (200, [1, 2], RouteUnavailable, True),
        (200, "", RouteUnavailable, True),
    ],
)
@responses.activate
def test_route_error_statuses(client: VastClient, status, body, error, retryable) -> None:
    kwargs = {"body": body} if isinstance(body, str) else {"json": body}
    responses.post(ROUTE, status=status, **kwargs)
    with pytest.raises(error) as e:
        client.route("llm", 1.0)
    assert e.value.retryable is retryable and e.value.status == status
    assert str(e.value).startswith(f"route: {status} ") or f"HTTP {status}" in str(e.value) \
        or "not a JSON object" in str(e.value)
    if isinstance(body, dict):
        assert body["error"] in str(e.value)
    assert "'llm'" in str(e.value)
    assert_no_secret(e.value)


@responses.activate
def test_route_401_message(client: VastClient) -> None:
    responses.post(ROUTE, status=401, json={"error": "invalid key"})
    with pytest.raises(RouteAuthError) as e:
        client.route("x", 1.0)
    assert str(e.value) == "route: 401 authentication failed for endpoint 'x': invalid key"


@responses.activate
def test_route_429_is_plain_text_without_retry_after(client: VastClient) -> None:
    responses.post(ROUTE, status=429, body="API requests too frequent",
                   content_type="text/plain")
    with pytest.raises(RouteRateLimited) as e:
        client.route("llm", 1.0)
    assert e.value.text == "API requests too frequent" and e.value.retryable


@responses.activate
def test_route_redirect_is_not_followed(client: VastClient) -> None:
    responses.post(ROUTE, status=307, headers={"Location": "https://elsewhere/route/"})
    with pytest.raises(RouteUnavailable, match="redirect to https://elsewhere/route/"):
        client.route("llm", 1.0)
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("exc", "match"),
    [
        (requests.ConnectionError(f"reset; key={KEY}"), "connection failed"),
        (requests.ReadTimeout("slow"), "timed out"),
        (requests.ConnectTimeout("no syn-ack"), "timed out"),
    ],
)
@responses.activate
def test_route_connection_error_and_timeouts(client: VastClient, exc, match) -> None:
    responses.post(ROUTE, body=exc)
    with pytest.raises(RouteUnavailable, match=match) as e:
        client.route("llm", 1.0)
    assert e.value.retryable and e.value.status is None
    assert_no_secret(e.value)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({**ASSIGNMENT, "url": "ftp://1.2.3.4:21"}, "not an http"),
        ({**ASSIGNMENT, "url": "http://"}, "not an http"),
        ({**ASSIGNMENT, "url": "http://[::1"}, "not an http"),
        ({**ASSIGNMENT, "url": 5}, "not an http"),
        ({**ASSIGNMENT, "url": None}, "not an http"),
    ],
)
@responses.activate
def test_route_bad_assignment_is_refused(client: VastClient, answer, match) -> None:
    responses.post(ROUTE, json=answer)
    with pytest.raises(RouteBadAnswer, match=match) as e:
        client.route("llm", 1.0)
    assert not e.value.retryable and e.value.status == 200


@responses.activate
def test_route_without_key_names_the_setting() -> None:
    c = VastClient(route_url=ROUTE, api_key=None)
    with pytest.raises(RouteAuthError, match="VAST_API_KEY") as e:
        c.route("llm", 1.0)
    assert e.value.status is None and not e.value.retryable
    assert len(responses.calls) == 0


@responses.activate
def test_server_echoing_the_key_is_redacted(client: VastClient) -> None:
    responses.post(ROUTE, status=401, json={"error": f"key {KEY} is revoked"})
    with pytest.raises(RouteAuthError) as e:
        client.route("llm", 1.0)
    assert "key *** is revoked" in str(e.value)
    assert_no_secret(e.value)


@responses.activate
def test_long_server_text_is_truncated(client: VastClient) -> None:
    responses.post(ROUTE, status=503, body="y" * 10_000)
    with pytest.raises(RouteUnavailable) as e:
        client.route("llm", 1.0)
    assert len(e.value.text) == 2000 and len(str(e.value)) < 700


@responses.activate
def test_cookies_are_not_kept(client: VastClient) -> None:
    responses.post(ROUTE, json={"status": "Stopped"}, headers={"Set-Cookie": "s=1; Path=/"})
    client.route("llm", 1.0)
    client.route("llm", 1.0)
    assert "Cookie" not in responses.calls[1].request.headers
    assert len(client.session.cookies) == 0


# --- worker -----------------------------------------------------------------------------


@responses.activate
def test_worker_call_forwards_auth_data_verbatim_without_the_key(client: VastClient) -> None:
    responses.post(WORKER + "/v1/completions", json={"text": "hi"})
    resp = client.call_worker(Assignment(ASSIGNMENT), "/v1/completions", {"p": 1}, timeout=5)
    assert resp.status == 200 and resp.body == {"text": "hi"} and resp.elapsed >= 0
    sent = responses.calls[0].request
    assert json.loads(sent.body) == {"auth_data": ASSIGNMENT, "payload": {"p": 1},
                                     "session_id": None}
    assert "Authorization" not in sent.headers and KEY not in sent.body.decode()
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.req_kwargs["timeout"] == (5.0, 5)
    assert sent.req_kwargs["verify"] is True and sent.req_kwargs["stream"] is True


@responses.activate
def test_worker_url_trailing_slash(client: VastClient) -> None:
    responses.post(WORKER + "/generate", json={})
    client.call_worker(Assignment({**ASSIGNMENT, "url": WORKER + "/"}), "/generate", {}, 5)
    assert responses.calls[0].request.url == WORKER + "/generate"


@pytest.mark.parametrize(
    ("kwargs", "verify"),
    [({"ca_bundle": __file__}, __file__), ({"insecure_worker_tls": True}, False),
     ({"ca_bundle": __file__, "insecure_worker_tls": True}, __file__)],
)
@responses.activate
def test_worker_tls_verification_choice(kwargs, verify) -> None:
    responses.post(WORKER + "/x", json={})
    VastClient(route_url=ROUTE, api_key=KEY, **kwargs).call_worker(
        Assignment(ASSIGNMENT), "/x", {}, 5)
    assert responses.calls[0].request.req_kwargs["verify"] == verify


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ("plain words", "text/plain", "plain words"),
        ("héllo wörld", "text/plain", "héllo wörld"),  # UTF-8 without a charset
        ('{"a": 1}', "text/plain", '{"a": 1}'),  # the worker said text
        ('{"a": 1}', "application/json; charset=utf-8", {"a": 1}),
        ("[1, 2]", "application/problem+json", [1, 2]),
        ("not json", "application/json", "not json"),
        ("", "text/plain", ""),
    ],
)
@responses.activate
def test_worker_body_decoding(client: VastClient, body, content_type, expected) -> None:
    responses.post(WORKER + "/generate", body=body.encode(), content_type=content_type)
    resp = client.call_worker(Assignment(ASSIGNMENT), "/generate", {}, 5)
    assert resp.body == expected


@pytest.mark.parametrize(
    ("status", "error", "meaning"),
    [
        (401, WorkerSignatureRejected, "assignment signature rejected"),
        (408, WorkerUnavailable, "request timeout"),
        (429, WorkerUnavailable, "busy"),
        (500, WorkerUnavailable, "worker error"),
        (503, WorkerUnavailable, "worker error"),
        (410, WorkerRejected, "unknown session"),
        (422, WorkerRejected, "malformed request"),
        (499, WorkerRejected, "client disconnected"),
        (404, WorkerRejected, "rejected"),
        (302, WorkerRejected, "rejected"),
    ],
)
@responses.activate
def test_worker_statuses(client: VastClient, status, error, meaning) -> None:
    responses.post(WORKER + "/x", status=status, body=f"worker says {status}")
    with pytest.raises(error) as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert type(e.value) is error
    assert e.value.status == status and e.value.text == f"worker says {status}"
    assert f"{status} {meaning}" in str(e.value) and f"worker says {status}" in str(e.value)
    assert e.value.retryable is issubclass(error, WorkerUnavailable)
    assert len(responses.calls) == 1  # no redirect followed, no retry


@pytest.mark.parametrize(
    "exc", [requests.ConnectionError("Connection refused"), requests.ConnectTimeout("syn")])
@responses.activate
def test_worker_connection_refused_is_reroutable(client: VastClient, exc) -> None:
    responses.post(WORKER + "/x", body=exc)
    with pytest.raises(WorkerUnavailable) as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert type(e.value) is WorkerUnavailable and e.value.retryable
    assert_no_secret(e.value)


@responses.activate
def test_worker_tls_failure_names_the_ca_setting(client: VastClient) -> None:
    responses.post(WORKER + "/x", body=requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(WorkerUnavailable, match="VAST_CA_BUNDLE"):
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)


@responses.activate
def test_worker_read_timeout_says_the_gpu_may_have_run(client: VastClient) -> None:
    responses.post(WORKER + "/x", body=requests.ReadTimeout("slow"))
    with pytest.raises(WorkerTimeout) as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert "may have done the work" in str(e.value) and "twice" in str(e.value)
    assert not e.value.retryable
    assert WorkerTimeout("m", retryable=True).retryable  # a caller may opt in


@pytest.mark.parametrize("with_length", [True, False])
@responses.activate
def test_worker_huge_answer_is_refused(client: VastClient, with_length: bool) -> None:
    responses.post(WORKER + "/x", body="x" * 5000, auto_calculate_content_length=with_length)
    with pytest.raises(WorkerBadAnswer, match="DISPATCHER_MAX_RESULT_BYTES") as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert not e.value.retryable and e.value.status == 200


@responses.activate
def test_worker_answer_at_the_limit_is_fine(client: VastClient) -> None:
    responses.post(WORKER + "/x", body="x" * 1000, content_type="text/plain")
    assert client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5).body == "x" * 1000


@responses.activate
def test_huge_error_answer_keeps_its_status(client: VastClient) -> None:
    responses.post(WORKER + "/x", status=503, body="<html>" + "x" * 50_000)
    with pytest.raises(WorkerUnavailable) as e:
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 5)
    assert e.value.status == 503 and len(e.value.text) == 2000


def test_worker_arguments_are_checked(client: VastClient) -> None:
    with pytest.raises(ValueError, match="path"):
        client.call_worker(Assignment(ASSIGNMENT), "v1", {}, 5)
    with pytest.raises(ValueError, match="timeout"):
        client.call_worker(Assignment(ASSIGNMENT), "/x", {}, 0)
    with pytest.raises(ValueError, match="payload"):
        client.call_worker(Assignment(ASSIGNMENT), "/x", {"x": float("nan")}, 5)
    with pytest.raises(ValueError, match="payload"):
        client.call_worker(Assignment(ASSIGNMENT), "/x", {"x": object()}, 5)
    for url in ("file:///etc/passwd", "http://", 7):
        with pytest.raises(RouteBadAnswer):
            client.call_worker(Assignment({**ASSIGNMENT, "url": url}), "/x", {}, 5)


# --- construction, secrets, logs --------------------------------------------------------


def test_constructor_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="VAST_ROUTE_URL"):
        VastClient(route_url="run.vast.ai/route/", api_key=KEY)
    with pytest.raises(ValueError, match="VAST_CA_BUNDLE"):
        VastClient(route_url=ROUTE, api_key=KEY, ca_bundle="/no/such/ca.pem")


def test_from_settings() -> None:
    s = Settings(vast_api_key=KEY, route_url=ROUTE, route_timeout=3.0, concurrency=8,
                 max_result_bytes=123)
    c = VastClient.from_settings(s)
    assert (c.route_url, c.router.route_timeout, c.workers.max_result_bytes) == (ROUTE, 3.0, 123)
    adapter = c.session.get_adapter(WORKER)
    assert adapter._pool_maxsize == 8 and adapter._pool_block is False
    assert adapter.max_retries.total == 0
    assert KEY not in repr(c)


def test_insecure_tls_is_logged_loudly_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.vast"):
        VastClient(route_url=ROUTE, api_key=KEY, insecure_worker_tls=True)
    warnings = [r for r in caplog.records if "NOT verified" in r.message]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dispatcher.vast"):
        VastClient(route_url=ROUTE, api_key=KEY)
    assert not caplog.records


def every_error(client: VastClient) -> Iterator[Callable[[], object]]:
    """Calls that each raise, with the key echoed wherever a server or library could."""
    echo = f"echo {KEY} Bearer {KEY}"
    a = Assignment(ASSIGNMENT)
    for status in (400, 401, 429, 500, 307):
        yield lambda s=status: (responses.replace(responses.POST, ROUTE, status=s, body=echo,
                                                  headers={"Location": echo}),
                                client.route("llm", 1.0))
    for body in (echo, json.dumps({**ASSIGNMENT, "url": f"ftp://{KEY}"}),
                 json.dumps({"url": KEY})):
        yield lambda b=body: (responses.replace(responses.POST, ROUTE, body=b),
                              client.route("llm", 1.0))
    for exc in (requests.ConnectionError(echo), requests.ReadTimeout(echo),
                requests.exceptions.SSLError(echo)):
        yield lambda e=exc: (responses.replace(responses.POST, ROUTE, body=e),
                             client.route("llm", 1.0))
    for status in (401, 408, 410, 422, 429, 499, 500, 503):
        yield lambda s=status: (responses.replace(responses.POST, WORKER + "/x", status=s,
                                                  body=echo),
                                client.call_worker(a, "/x", {}, 5))
    for exc in (requests.ConnectionError(echo), requests.ReadTimeout(echo),
                requests.ConnectTimeout(echo), requests.exceptions.SSLError(echo)):
        yield lambda e=exc: (responses.replace(responses.POST, WORKER + "/x", body=e),
                             client.call_worker(a, "/x", {}, 5))
    yield lambda: (responses.replace(responses.POST, WORKER + "/x", body=echo * 100),
                   client.call_worker(a, "/x", {}, 5))


@responses.activate
def test_no_error_or_log_line_carries_the_key(client: VastClient,
                                              caplog: pytest.LogCaptureFixture) -> None:
    responses.post(ROUTE, json={})
    responses.post(WORKER + "/x", json={})
    raised: list[VastError] = []
    with caplog.at_level(logging.DEBUG):
        for call in every_error(client):
            with pytest.raises(VastError) as e:
                call()
            raised.append(e.value)
        responses.replace(responses.POST, ROUTE, json=ASSIGNMENT)
        client.route("llm", 1.0)
        responses.replace(responses.POST, WORKER + "/x", json={"secret-payload": 1})
        client.call_worker(Assignment(ASSIGNMENT), "/x", {"secret-payload": 1}, 5)
    assert len(raised) == 24
    for err in raised:
        assert_no_secret(err)
    assert caplog.records and KEY not in caplog.text and "secret-payload" not in caplog.text
    vast_lines = [r for r in caplog.records if r.name == "dispatcher.vast"]
    assert len(vast_lines) == len(raised) + 2  # one DEBUG line per call
    assert all(r.levelno == logging.DEBUG for r in vast_lines)


def test_errors_survive_pickling() -> None:
    e = pickle.loads(pickle.dumps(WorkerUnavailable("worker: 503", 503, "busy")))
    assert type(e) is WorkerUnavailable and (str(e), e.status, e.text) == ("worker: 503", 503,
                                                                           "busy")
    assert e.retryable
    t = pickle.loads(pickle.dumps(WorkerTimeout("t", retryable=True)))
    assert t.retryable and t.status is None


def test_redact() -> None:
    assert redact(f"a {KEY} b {KEY}", KEY) == "a *** b ***"
    assert redact("nothing", None) == "nothing"
    assert redact("nothing", "") == "nothing"


# --- a real local server ----------------------------------------------------------------


class Worker(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    ports: list[int] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.ports.append(self.client_address[1])
        if self.path == "/reset":  # RST before any answer
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return
        if self.path == "/ok":
            self._answer(200, b'{"ok": true}', "application/json")
        elif self.path == "/drip":  # every byte is quick, the whole answer is not
            self._head(200, length=100)
            for _ in range(100):
                self._send(b"x", 0.05)
        elif self.path == "/pause":  # one byte, then a pause just under the timeout
            self._head(200, length=3)
            self._send(b"x", 0.9)
            self._send(b"x", 5)
        elif self.path == "/chunked-huge":
            self._head(200)
            for _ in range(20):
                self._chunk(b"y" * 1000)
            self._chunk(b"")
        elif self.path == "/break":  # a 200 whose body never completes
            self._head(200, length=1000)
            self._send(b'{"partial": ', 0)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _head(self, status: int, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, data: bytes, pause: float) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        time.sleep(pause)

    def _chunk(self, data: bytes) -> None:
        self._send(f"{len(data):x}\r\n".encode() + data + b"\r\n", 0)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Worker)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def real(local: str) -> Iterator[tuple[VastClient, Assignment]]:
    c = VastClient(route_url=ROUTE, api_key=KEY, max_result_bytes=10_000, pool_size=4)
    yield c, Assignment({**ASSIGNMENT, "url": local})
    c.close()


def test_real_connection_reset_is_reroutable(real) -> None:
    client, a = real
    with pytest.raises(WorkerUnavailable, match="connection failed") as e:
        client.call_worker(a, "/reset", {}, 5)
    assert_no_secret(e.value)


def test_real_slow_drip_hits_the_overall_deadline(real) -> None:
    client, a = real
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="may have done the work"):
        client.call_worker(a, "/drip", {}, timeout=1.0)
    assert time.monotonic() - started < 1.5


def test_real_pause_near_the_deadline_is_cut_at_the_deadline(real) -> None:
    client, a = real
    started = time.monotonic()
    with pytest.raises(WorkerTimeout):
        client.call_worker(a, "/pause", {}, timeout=1.2)
    assert time.monotonic() - started < 1.6  # not 0.9 + a whole new 1.2 s read


def test_real_chunked_answer_over_the_limit(real) -> None:
    client, a = real
    with pytest.raises(WorkerBadAnswer):
        client.call_worker(a, "/chunked-huge", {}, 5)


def test_real_break_after_success_status_is_not_rerouted(real) -> None:
    client, a = real
    with pytest.raises(WorkerTimeout, match="did the work") as e:
        client.call_worker(a, "/break", {}, 5)
    assert e.value.status == 200 and not e.value.retryable


def test_real_keep_alive_and_threads(real) -> None:
    client, a = real
    Worker.ports.clear()
    for _ in range(3):
        assert client.call_worker(a, "/ok", {}, 5).body == {"ok": True}
    assert len(set(Worker.ports)) == 1  # one connection, reused
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda i: client.call_worker(a, "/ok", {"i": i}, 5).body,
                               range(64)))
    assert bodies == [{"ok": True}] * 64


@pytest.fixture(scope="module")
def tls_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The same worker over HTTPS with a self-signed certificate for 127.0.0.1."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Worker)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_port}", cert
    server.shutdown()
    server.server_close()


def test_tls_worker_with_ca_bundle_insecure_and_neither(tls_local) -> None:
    url, cert = tls_local
    a = Assignment({**ASSIGNMENT, "url": url})
    with VastClient(route_url=ROUTE, api_key=KEY, ca_bundle=cert) as c:
        assert c.call_worker(a, "/ok", {}, 5).body == {"ok": True}
        started = time.monotonic()
        with pytest.raises(WorkerTimeout):  # the deadline holds on a TLS socket too
            c.call_worker(a, "/pause", {}, timeout=1.2)
        assert time.monotonic() - started < 1.6
    with VastClient(route_url=ROUTE, api_key=KEY, insecure_worker_tls=True) as c:
        assert c.call_worker(a, "/ok", {}, 5).body == {"ok": True}
    with VastClient(route_url=ROUTE, api_key=KEY) as c:
        with pytest.raises(WorkerUnavailable, match="VAST_CA_BUNDLE") as e:
            c.call_worker(a, "/ok", {}, 5)
        assert_no_secret(e.value)
