"""The route and worker client against a real peer on loopback: every status, every shape,
hostile answers (drips, resets, huge or nested bodies), TLS, and the key kept out of
every error and log line."""

from __future__ import annotations

import json
import logging
import pickle
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dispatcher.config import Settings
from dispatcher.errors import (
    RouteAuthError,
    RouteBadAnswer,
    RouteRateLimited,
    RouteRejected,
    RouteUnavailable,
    VastError,
    WorkerAborted,
    WorkerBadAnswer,
    WorkerRejected,
    WorkerSignatureRejected,
    WorkerTimeout,
    WorkerTLSError,
    WorkerUnavailable,
)
from dispatcher.net import WATCHDOG
from dispatcher.vast import Assignment, NoWorker, VastClient, redact
from tests.peer import Peer, Reply

KEY = "sk-test-0123456789abcdef"
ASSIGNMENT = {"endpoint": "llm", "url": "", "cost": 64, "reqnum": 7, "signature": "sig",
              "request_idx": 3, "__request_id": "r1"}


@pytest.fixture(scope="module")
def vast() -> Iterator[Peer]:
    """Plays the route API and the GPU worker (tests script its answers)."""
    p = Peer()
    yield p
    p.close()


@pytest.fixture
def peer(vast: Peer) -> Peer:
    vast.reply(body={})
    vast.clear()
    return vast


@pytest.fixture
def client(peer: Peer) -> Iterator[VastClient]:
    c = VastClient(route_url=peer.url + "/route/", api_key=KEY, max_result_bytes=1000,
                   route_timeout=2.0)
    yield c
    c.close()


@pytest.fixture
def a(peer: Peer) -> Assignment:
    """An assignment whose worker is the peer."""
    return Assignment({**ASSIGNMENT, "url": peer.url})


def assert_no_secret(e: BaseException) -> None:
    assert isinstance(e, VastError)
    assert e.__cause__ is None and e.__context__ is None
    printed = "".join(traceback.format_exception(e))
    for text in (str(e), repr(e), repr(e.args), e.text, printed, repr(pickle.dumps(e))):
        assert KEY not in text


# --- route ------------------------------------------------------------------------------


def test_route_assignment_is_kept_verbatim(client: VastClient, peer: Peer) -> None:
    answer = {**ASSIGNMENT, "url": "https://1.2.3.4:40123"}
    peer.reply(body=answer)
    a = client.route("llm", 64.0)
    assert isinstance(a, Assignment) and a.auth_data == answer
    assert (a.url, a.reqnum, a.request_idx) == ("https://1.2.3.4:40123", 7, 3)
    sent = peer.seen[0]
    assert sent.path == "/route/" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json() == {"endpoint": "llm", "cost": 64.0, "replay_timeout": 60.0}


# The published schema (../shared/vast-route-openapi.md) lists no request_idx; any field
# may be absent, and unknown ones may appear: all are forwarded untouched.
FULL = {**ASSIGNMENT, "url": "https://1.2.3.4:40123"}
PUBLISHED = {k: v for k, v in FULL.items() if k != "request_idx"}


@pytest.mark.parametrize(
    "answer",
    [PUBLISHED, {"url": FULL["url"]}, {**FULL, "zz_new": {"nested": [1, None]}},
     *({k: v for k, v in PUBLISHED.items() if k != drop} for drop in PUBLISHED if drop != "url")],
    ids=lambda a: ",".join(sorted(a)),
)
def test_route_assignment_of_any_shape_with_a_url_is_forwarded_verbatim(
        client: VastClient, peer: Peer, answer: dict) -> None:
    peer.reply(body=answer)
    a = client.route("llm", 64.0)
    assert isinstance(a, Assignment) and a.auth_data == answer
    assert a.request_idx == answer.get("request_idx")
    assert a.reqnum == answer.get("reqnum")


def test_route_no_worker_keeps_status_and_request_idx(client: VastClient, peer: Peer) -> None:
    peer.reply(body={"endpoint": "llm", "status": "2 loading, 0 idle", "__request_id": "x",
                     "request_idx": 9})
    answer = client.route("llm", 1.0, request_idx=9)
    assert answer == NoWorker(status="2 loading, 0 idle", request_idx=9, endpoint="llm")
    assert peer.seen[0].json() == {"endpoint": "llm", "cost": 1.0, "request_idx": 9,
                                   "replay_timeout": 60.0}


def test_route_request_idx_zero_is_sent(client: VastClient, peer: Peer) -> None:
    peer.reply(body={"status": "Stopped"})
    client.route("llm", 1.0, request_idx=0)
    assert peer.seen[0].json()["request_idx"] == 0


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"endpoint": "llm", "status": {"loading": 2}}, NoWorker("{'loading': 2}", None, "llm")),
        ({"status": 3, "request_idx": True}, NoWorker("3")),
        ({"endpoint": "llm"}, NoWorker("", None, "llm")),
        ({}, NoWorker("")),
    ],
)
def test_route_no_worker_odd_shapes(client: VastClient, peer: Peer, answer, expected) -> None:
    peer.reply(body=answer)
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
        (200, "[" * 100_000 + "]" * 100_000, RouteUnavailable, True),  # nested too deep
    ],
    ids=lambda v: str(v)[:20],
)
def test_route_error_statuses(client: VastClient, peer: Peer, status, body, error,
                              retryable) -> None:
    peer.reply(status=status, body=body)
    with pytest.raises(error) as e:
        client.route("llm", 1.0)
    assert e.value.retryable is retryable and e.value.status == status
    assert str(e.value).startswith(f"route: {status} ") or f"HTTP {status}" in str(e.value) \
        or "not a JSON object" in str(e.value)
    if isinstance(body, dict):
        assert body["error"] in str(e.value)
    assert "'llm'" in str(e.value)
    assert_no_secret(e.value)


def test_route_401_message(client: VastClient, peer: Peer) -> None:
    peer.reply(status=401, body={"error": "invalid key"})
    with pytest.raises(RouteAuthError) as e:
        client.route("x", 1.0)
    assert str(e.value) == "route: 401 authentication failed for endpoint 'x': invalid key"


def test_route_429_is_plain_text_without_retry_after(client: VastClient, peer: Peer) -> None:
    peer.reply(status=429, body="API requests too frequent", content_type="text/plain")
    with pytest.raises(RouteRateLimited) as e:
        client.route("llm", 1.0)
    assert e.value.text == "API requests too frequent" and e.value.retryable


def test_route_redirect_is_not_followed(client: VastClient, peer: Peer) -> None:
    peer.reply(status=307, headers={"Location": "https://elsewhere/route/"})
    with pytest.raises(RouteUnavailable, match="redirect to https://elsewhere/route/"):
        client.route("llm", 1.0)
    assert len(peer.seen) == 1


def test_route_connection_refused_and_reset(client: VastClient, peer: Peer) -> None:
    peer.reply(reset=True)
    with pytest.raises(RouteUnavailable, match="connection failed") as e:
        client.route("llm", 1.0)
    assert e.value.retryable and e.value.status is None
    assert_no_secret(e.value)
    gone = VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY)
    with pytest.raises(RouteUnavailable, match="connection failed for .*: connection refused"):
        gone.route("llm", 1.0)


@pytest.mark.parametrize("reply", [Reply(delay=5), Reply(header_drip=0.2),
                                   Reply(body={"status": "x" * 200}, drip=0.02)],
                         ids=["silent", "header-drip", "body-drip"])
def test_route_timeout_bounds_the_whole_call(client: VastClient, peer: Peer,
                                             reply: Reply) -> None:
    """A slow-drip route answer never trips a per-read timeout; the call's deadline does."""
    peer.reply(**reply.__dict__)
    started = time.monotonic()
    with pytest.raises(RouteUnavailable, match="VAST_ROUTE_TIMEOUT=2s") as e:
        client.route("llm", 1.0)
    assert time.monotonic() - started < 2.0 + 1.5  # the deadline, plus a loaded machine
    assert e.value.retryable


def test_route_answer_over_the_size_limit_is_refused(client: VastClient, peer: Peer) -> None:
    peer.reply(body={"status": "x" * (1024 * 1024 + 10)})
    with pytest.raises(RouteUnavailable, match="larger than"):
        client.route("llm", 1.0)


@pytest.mark.parametrize(
    ("url", "match"),
    [("ftp://1.2.3.4:21", "not an http"), ("http://", "not an http"),
     ("http://[::1", "not an http"), (5, "not an http"), (None, "not an http")],
)
def test_route_bad_assignment_is_refused(client: VastClient, peer: Peer, url, match) -> None:
    peer.reply(body={**ASSIGNMENT, "url": url})
    with pytest.raises(RouteBadAnswer, match=match) as e:
        client.route("llm", 1.0)
    assert not e.value.retryable and e.value.status == 200


def test_route_without_key_names_the_setting(peer: Peer) -> None:
    c = VastClient(route_url=peer.url + "/route/", api_key=None)
    with pytest.raises(RouteAuthError, match="VAST_API_KEY") as e:
        c.route("llm", 1.0)
    assert e.value.status is None and not e.value.retryable
    assert len(peer.seen) == 0


@pytest.mark.parametrize("key", [KEY + "\n", "sk abc", "sk\x00abc", "\tsk"])
def test_a_key_that_cannot_be_a_header_is_refused_up_front_without_showing_it(
        peer: Peer, key: str) -> None:
    with pytest.raises(ValueError, match="VAST_API_KEY") as e:
        VastClient(route_url=peer.url + "/route/", api_key=key)
    assert KEY not in str(e.value) and "sk" not in str(e.value).split(":", 1)[1]


def test_server_echoing_the_key_is_redacted(client: VastClient, peer: Peer) -> None:
    peer.reply(status=401, body={"error": f"key {KEY} is revoked"})
    with pytest.raises(RouteAuthError) as e:
        client.route("llm", 1.0)
    assert "key *** is revoked" in str(e.value)
    assert_no_secret(e.value)


def test_long_server_text_is_truncated(client: VastClient, peer: Peer) -> None:
    peer.reply(status=503, body="y" * 10_000)
    with pytest.raises(RouteUnavailable) as e:
        client.route("llm", 1.0)
    assert len(e.value.text) == 2000 and len(str(e.value)) < 700


def test_cookies_are_not_kept(client: VastClient, peer: Peer) -> None:
    peer.reply(body={"status": "Stopped"}, headers={"Set-Cookie": "s=1; Path=/"})
    client.route("llm", 1.0)
    client.route("llm", 1.0)
    assert "Cookie" not in peer.seen[1].headers


# --- worker -----------------------------------------------------------------------------


def test_worker_call_forwards_auth_data_verbatim_without_the_key(
        client: VastClient, peer: Peer, a: Assignment) -> None:
    peer.reply(body={"text": "hi"})
    resp = client.call_worker(a, "/v1/completions", {"p": 1}, timeout=5)
    assert resp.status == 200 and resp.body == {"text": "hi"} and resp.elapsed >= 0
    sent = peer.seen[0]
    assert sent.path == "/v1/completions"
    assert sent.json() == {"auth_data": a.auth_data, "payload": {"p": 1}, "session_id": None}
    assert "Authorization" not in sent.headers and KEY not in sent.body.decode()
    assert sent.headers["Content-Type"] == "application/json"


def test_worker_url_trailing_slash(client: VastClient, peer: Peer) -> None:
    client.call_worker(Assignment({**ASSIGNMENT, "url": peer.url + "/"}), "/generate", {}, 5)
    assert peer.seen[0].path == "/generate"


def test_worker_tls_verification_choice() -> None:
    route = "http://127.0.0.1:1/route/"
    checked = VastClient(route_url=route, api_key=KEY).workers.tls
    assert checked.verify_mode == ssl.CERT_REQUIRED and checked.check_hostname
    assert not checked.verify_flags & ssl.VERIFY_X509_STRICT
    off = VastClient(route_url=route, api_key=KEY, insecure_worker_tls=True).workers.tls
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname
    with pytest.raises(ValueError, match="VAST_CA_BUNDLE: .* no certificate"):
        VastClient(route_url=route, api_key=KEY, ca_bundle=__file__)


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
def test_worker_body_decoding(client: VastClient, peer: Peer, a: Assignment, body,
                              content_type, expected) -> None:
    peer.reply(body=body.encode(), content_type=content_type)
    assert client.call_worker(a, "/generate", {}, 5).body == expected


def test_a_deeply_nested_json_answer_is_kept_as_text(peer: Peer, a: Assignment) -> None:
    """Decoding must not raise RecursionError (the job would re-run on a GPU)."""
    nested = "[" * 200_000 + "]" * 200_000
    peer.reply(body=nested, content_type="application/json")
    with VastClient(route_url=peer.url + "/route/", api_key=KEY) as c:
        assert c.call_worker(a, "/x", {}, 5).body == nested


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
def test_worker_statuses(client: VastClient, peer: Peer, a: Assignment, status, error,
                         meaning) -> None:
    peer.reply(status=status, body=f"worker says {status}",
               headers={"Location": "http://elsewhere/"})
    with pytest.raises(error) as e:
        client.call_worker(a, "/x", {}, 5)
    assert type(e.value) is error
    assert e.value.status == status and e.value.text == f"worker says {status}"
    assert f"{status} {meaning}" in str(e.value) and f"worker says {status}" in str(e.value)
    assert e.value.retryable is issubclass(error, WorkerUnavailable)
    assert len(peer.seen) == 1  # no redirect followed, no retry


def test_worker_401_with_an_empty_body_as_pyworker_sends_it(
        client: VastClient, peer: Peer, a: Assignment) -> None:
    peer.reply(status=401, body=b"")
    with pytest.raises(WorkerSignatureRejected, match=r"401 .*\(empty body\)"):
        client.call_worker(a, "/x", {}, 5)


def test_worker_connection_refused_or_reset_is_reroutable(
        client: VastClient, peer: Peer, a: Assignment) -> None:
    gone = Assignment({**ASSIGNMENT, "url": "http://127.0.0.1:1"})
    with pytest.raises(WorkerUnavailable, match="connection refused") as e:
        client.call_worker(gone, "/x", {}, 5)
    assert type(e.value) is WorkerUnavailable and e.value.retryable
    assert_no_secret(e.value)
    peer.reply(reset=True)
    with pytest.raises(WorkerUnavailable, match="connection failed") as e:
        client.call_worker(a, "/x", {}, 5)
    assert type(e.value) is WorkerUnavailable


def test_worker_silence_says_the_gpu_may_have_run(client: VastClient, peer: Peer,
                                                  a: Assignment) -> None:
    peer.reply(delay=3)
    with pytest.raises(WorkerTimeout) as e:
        client.call_worker(a, "/x", {}, 0.5)
    assert "may have done the work" in str(e.value) and "twice" in str(e.value)
    assert not e.value.retryable
    assert WorkerTimeout("m", retryable=True).retryable  # a caller may opt in


@pytest.mark.parametrize("with_length", [True, False])
def test_worker_huge_answer_is_refused(client: VastClient, peer: Peer, a: Assignment,
                                       with_length: bool) -> None:
    peer.reply(body="x" * 5000, chunked=not with_length)
    with pytest.raises(WorkerBadAnswer, match="DISPATCHER_MAX_RESULT_BYTES") as e:
        client.call_worker(a, "/x", {}, 5)
    assert not e.value.retryable and e.value.status == 200


def test_worker_answer_at_the_limit_is_fine(client: VastClient, peer: Peer,
                                            a: Assignment) -> None:
    peer.reply(body="x" * 1000, content_type="text/plain")
    assert client.call_worker(a, "/x", {}, 5).body == "x" * 1000


def test_huge_error_answer_keeps_its_status(client: VastClient, peer: Peer,
                                            a: Assignment) -> None:
    peer.reply(status=503, body="<html>" + "x" * 50_000)
    with pytest.raises(WorkerUnavailable) as e:
        client.call_worker(a, "/x", {}, 5)
    assert e.value.status == 503 and len(e.value.text) == 2000


def test_worker_arguments_are_checked(client: VastClient, a: Assignment) -> None:
    with pytest.raises(ValueError, match="path"):
        client.call_worker(a, "v1", {}, 5)
    with pytest.raises(ValueError, match="timeout"):
        client.call_worker(a, "/x", {}, 0)
    with pytest.raises(ValueError, match="payload"):
        client.call_worker(a, "/x", {"x": float("nan")}, 5)
    with pytest.raises(ValueError, match="payload"):
        client.call_worker(a, "/x", {"x": object()}, 5)
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ValueError, match="payload"):
        client.call_worker(a, "/x", nested, 5)
    for url in ("file:///etc/passwd", "http://", 7):
        with pytest.raises(RouteBadAnswer):
            client.call_worker(Assignment({**ASSIGNMENT, "url": url}), "/x", {}, 5)


# --- hostile workers: the deadline is wall-clock, connect to last byte -------------------

SLACK = 2.0  # what a loaded 2-core machine may add to a deadline; each failure case
# below takes longer than deadline + SLACK (6 s of header drip, 5 s of body drip, a 10 s reply)


def test_slow_drip_of_headers_is_cut_at_the_deadline(client: VastClient, peer: Peer,
                                                     a: Assignment) -> None:
    """Issue 11 item 1: a header line every 0.2 s kept the old client open indefinitely."""
    peer.reply(header_drip=0.2)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="may have done the work"):
        client.call_worker(a, "/x", {}, timeout=1.0)
    assert time.monotonic() - started < 1.0 + SLACK


def test_slow_drip_of_the_body_hits_the_overall_deadline(client: VastClient, peer: Peer,
                                                         a: Assignment) -> None:
    peer.reply(body="x" * 100, content_type="text/plain", drip=0.05)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="may have done the work"):
        client.call_worker(a, "/x", {}, timeout=1.0)
    assert time.monotonic() - started < 1.0 + SLACK


def test_a_call_cut_from_another_thread_ends_at_once(client: VastClient, peer: Peer,
                                                     a: Assignment) -> None:
    """What a cancel does: the GPU call's connection is closed, not waited out."""
    peer.reply(delay=10)
    guard = WATCHDOG.guard(30)
    threading.Timer(0.3, guard.abort, args=("job cancelled",)).start()
    started = time.monotonic()
    with pytest.raises(WorkerAborted, match="job cancelled"):
        client.call_worker(a, "/x", {}, timeout=30, guard=guard)
    assert time.monotonic() - started < 0.3 + SLACK


def test_a_chunked_answer_over_the_limit(client: VastClient, peer: Peer,
                                         a: Assignment) -> None:
    peer.reply(body="y" * 20_000, chunked=True)
    with pytest.raises(WorkerBadAnswer):
        client.call_worker(a, "/x", {}, 5)


def test_a_break_after_a_success_status_is_not_rerouted(client: VastClient, peer: Peer,
                                                        a: Assignment) -> None:
    peer.reply(body=b'{"partial": ' + b"x" * 100, length=1000, cut_after=12)
    with pytest.raises(WorkerTimeout, match="did the work") as e:
        client.call_worker(a, "/x", {}, 5)
    assert e.value.status == 200 and not e.value.retryable


def test_keep_alive_and_threads(peer: Peer, a: Assignment) -> None:
    peer.reply(body={"ok": True})
    with VastClient(route_url=peer.url + "/route/", api_key=KEY, pool_size=4) as c:
        for _ in range(3):
            assert c.call_worker(a, "/ok", {}, 5).body == {"ok": True}
        assert len({s.port for s in peer.seen}) == 1  # one connection, reused
        with ThreadPoolExecutor(16) as pool:
            bodies = list(pool.map(lambda i: c.call_worker(a, "/ok", {"i": i}, 5).body,
                                   range(64)))
    assert bodies == [{"ok": True}] * 64


def test_a_connection_left_mid_answer_is_not_reused(client: VastClient, peer: Peer,
                                                    a: Assignment) -> None:
    peer.reply(body="x" * 5000, content_type="text/plain")  # over the client's limit
    with pytest.raises(WorkerBadAnswer):
        client.call_worker(a, "/x", {}, 5)
    peer.reply(body={"ok": True})
    assert client.call_worker(a, "/x", {}, 5).body == {"ok": True}
    assert peer.seen[0].port != peer.seen[1].port


# --- construction, secrets, logs --------------------------------------------------------


def test_constructor_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="VAST_ROUTE_URL"):
        VastClient(route_url="run.vast.ai/route/", api_key=KEY)
    with pytest.raises(ValueError, match="VAST_CA_BUNDLE"):
        VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY,
                   ca_bundle="/no/such/ca.pem")


def test_from_settings() -> None:
    route = "https://run.example/route/"
    s = Settings(vast_api_key=KEY, route_url=route, route_timeout=3.0, concurrency=8,
                 max_result_bytes=123)
    c = VastClient.from_settings(s)
    assert (c.route_url, c.router.route_timeout, c.workers.max_result_bytes) == (route, 3.0, 123)
    assert c.pool.per_origin == 8
    assert KEY not in repr(c)


def test_insecure_tls_is_logged_loudly_once(caplog: pytest.LogCaptureFixture) -> None:
    route = "http://127.0.0.1:1/route/"
    with caplog.at_level(logging.WARNING, logger="dispatcher.vast"):
        VastClient(route_url=route, api_key=KEY, insecure_worker_tls=True)
    warnings = [r for r in caplog.records if "NOT verified" in r.message]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dispatcher.vast"):
        VastClient(route_url=route, api_key=KEY)
    assert not caplog.records


def every_error(client: VastClient, peer: Peer, a: Assignment
                ) -> Iterator[Callable[[], object]]:
    """Calls that each raise, with the key echoed wherever a server could."""
    echo = f"echo {KEY} Bearer {KEY} {KEY!r} {json.dumps(KEY + chr(10))}"
    for status in (400, 401, 429, 500, 307):
        yield lambda s=status: (peer.reply(status=s, body=echo, headers={"Location": echo}),
                                client.route("llm", 1.0))
    for body in (echo, {**ASSIGNMENT, "url": f"ftp://{KEY}"}, {"url": KEY},
                 {"status": echo * 100_000}):
        yield lambda b=body: (peer.reply(body=b), client.route("llm", 1.0))
    for reply in (Reply(reset=True), Reply(delay=5)):
        yield lambda r=reply: (peer.reply(**r.__dict__), client.route("llm", 1.0))
    for status in (401, 408, 410, 422, 429, 499, 500, 503):
        yield lambda s=status: (peer.reply(status=s, body=echo),
                                client.call_worker(a, "/x", {}, 5))
    for reply in (Reply(reset=True), Reply(delay=5)):
        yield lambda r=reply: (peer.reply(**r.__dict__), client.call_worker(a, "/x", {}, 0.5))
    yield lambda: (peer.reply(body=echo * 100), client.call_worker(a, "/x", {}, 5))


def test_no_error_or_log_line_carries_the_key(client: VastClient, peer: Peer, a: Assignment,
                                              caplog: pytest.LogCaptureFixture) -> None:
    raised: list[VastError] = []
    with caplog.at_level(logging.DEBUG):
        for call in every_error(client, peer, a):
            with pytest.raises(VastError) as e:
                call()
            raised.append(e.value)
        peer.reply(body={**ASSIGNMENT, "url": peer.url})
        client.route("llm", 1.0)
        peer.reply(body={"secret-payload": 1})
        client.call_worker(a, "/x", {"secret-payload": 1}, 5)
    assert len(raised) == 22
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
    # Escaped forms: a key with a newline shows up as \n in reprs, JSON and headers' errors.
    odd = KEY + "\n"
    for shown in (repr(odd), json.dumps(odd), odd.encode("unicode_escape").decode()):
        assert KEY not in redact(f"header value {shown} invalid", odd)


# --- TLS: Vast's workers serve HTTPS under Vast's own root CA ---------------------------


def _cert(subject: str, key, issuer=None, issuer_key=None, *, ca: bool, pathlen=None):
    """An X.509 certificate (cryptography), without keyUsage: as Vast's root has none."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen), critical=True))
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def vast_like_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A root CA shaped like Vast's jvastai_root.cer (basicConstraints with a pathlen, no
    keyUsage), a worker certificate for 127.0.0.1 under it, and an unrelated CA."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("tls")
    pem = serialization.Encoding.PEM
    ca_key, w_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("vast-like root", ca_key, ca=True, pathlen=1)
    worker = _cert("127.0.0.1", w_key, ca.subject, ca_key, ca=False)
    other = _cert("other root", other_key, ca=True, pathlen=1)
    paths = {n: d / n for n in ("ca.pem", "w.pem", "w.key", "other.pem")}
    paths["ca.pem"].write_bytes(ca.public_bytes(pem))
    paths["w.pem"].write_bytes(worker.public_bytes(pem))
    paths["other.pem"].write_bytes(other.public_bytes(pem))
    paths["w.key"].write_bytes(w_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls_peer(vast_like_ca: dict[str, Path]) -> Iterator[Peer]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(vast_like_ca["w.pem"]), str(vast_like_ca["w.key"]))
    p = Peer(ctx)
    p.reply(body={"ok": True})
    yield p
    p.close()


def test_the_vast_like_ca_fails_under_strict_verification(vast_like_ca, tls_peer) -> None:
    """The shape is right: OpenSSL's strict mode (Python 3.13+'s default) refuses it."""
    import urllib3

    strict = ssl.create_default_context(cafile=str(vast_like_ca["ca.pem"]))
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    http = urllib3.PoolManager(ssl_context=strict, retries=False)
    with pytest.raises(urllib3.exceptions.SSLError, match="keyCertSign|key usage"):
        http.request("POST", tls_peer.url + "/x", body=b"{}")


@pytest.fixture
def strict_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.13+ on 3.11: every default context is strict."""
    real = ssl.create_default_context

    def strict(*args: object, **kwargs: object) -> ssl.SSLContext:
        ctx = real(*args, **kwargs)  # type: ignore[arg-type]
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        return ctx

    monkeypatch.setattr(ssl, "create_default_context", strict)


def test_vast_like_workers_verify_with_the_ca_bundle_even_under_strict_python(
        strict_python: None, vast_like_ca, tls_peer) -> None:
    a = Assignment({**ASSIGNMENT, "url": tls_peer.url})
    with VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY,
                    ca_bundle=str(vast_like_ca["ca.pem"])) as c:
        assert c.workers.tls.verify_flags & ssl.VERIFY_X509_STRICT == 0
        assert c.workers.tls.check_hostname and c.workers.tls.verify_mode == ssl.CERT_REQUIRED
        assert c.call_worker(a, "/ok", {}, 5).body == {"ok": True}
        tls_peer.then(Reply(header_drip=0.2))
        started = time.monotonic()
        with pytest.raises(WorkerTimeout):  # the deadline holds on a TLS socket too
            c.call_worker(a, "/drip", {}, timeout=1.0)
        assert time.monotonic() - started < 1.0 + SLACK


def test_a_worker_from_another_ca_fails_at_once_naming_the_setting(vast_like_ca,
                                                                   tls_peer) -> None:
    a = Assignment({**ASSIGNMENT, "url": tls_peer.url})
    for kwargs in ({"ca_bundle": str(vast_like_ca["other.pem"])}, {}):
        with VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY, **kwargs) as c:
            with pytest.raises(WorkerTLSError, match="VAST_CA_BUNDLE") as e:
                c.call_worker(a, "/ok", {}, 5)
            assert not e.value.retryable and "certificate verification failed" in str(e.value)
            assert_no_secret(e.value)


def test_a_wrong_host_name_fails_verification(vast_like_ca, tls_peer) -> None:
    a = Assignment({**ASSIGNMENT, "url": tls_peer.url.replace("127.0.0.1", "localhost")})
    with VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY,
                    ca_bundle=str(vast_like_ca["ca.pem"])) as c:
        with pytest.raises(WorkerTLSError):
            c.call_worker(a, "/ok", {}, 5)


def test_insecure_worker_tls_skips_verification(tls_peer) -> None:
    a = Assignment({**ASSIGNMENT, "url": tls_peer.url})
    with VastClient(route_url="http://127.0.0.1:1/route/", api_key=KEY,
                    insecure_worker_tls=True) as c:
        assert c.call_worker(a, "/ok", {}, 5).body == {"ok": True}
