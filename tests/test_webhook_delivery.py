"""webhook_http against a real local HTTP server: signing, one attempt, its classification.

No mocks of requests: every attempt crosses a real socket to a ThreadingHTTPServer whose
behaviour (status, delay, huge or dripping answer, hang-up) each test sets.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from dispatcher.errors import WebhookSignatureError
from dispatcher.webhooks.delivery import MAX_ANSWER_BYTES, Attempt, deliver, retry_delay
from dispatcher.webhooks.signing import sign, verify

SECRET = "whsec-CANARY-5f3b9e1d-never-in-details"
BODY = b'{"event":"succeeded","job":{"id":"j1","status":"succeeded","note":"caf\xc3\xa9"}}'
DELIVERY = "j1.succeeded"
T0 = 1_700_000_000


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0  # seconds before answering
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    huge: int = 0  # answer with this many bytes (Content-Length), written in 64 KiB blocks
    endless: bool = False  # chunked answer that never ends (until the client goes away)
    drip: float = 0.0  # write the answer one byte per this many seconds
    hang_up: bool = False  # read the request, then close without any answer


@dataclass
class Received:
    client: tuple[str, int]  # the client's address: the same one means a reused connection
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server in a thread; ``behaviour`` is read per request."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.received: list[Received] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                b = outer.behaviour
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                got = Received(self.client_address, self.path, dict(self.headers.items()), body)
                outer.received.append(got)
                if b.hang_up:
                    self.close_connection = True
                    return
                if b.delay:
                    time.sleep(b.delay)
                with contextlib.suppress(OSError):  # the client may leave first; that is fine
                    self._answer(b)

            def _answer(self, b: Behaviour) -> None:
                self.send_response(b.status)
                for k, v in b.headers.items():
                    self.send_header(k, v)
                if b.endless:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    block = b"x" * 65536
                    chunk = f"{len(block):x}\r\n".encode() + block + b"\r\n"
                    stop = time.monotonic() + 5  # a safety net, never reached in a passing run
                    while time.monotonic() < stop:
                        self.wfile.write(chunk)
                    return
                payload = b.body
                length = b.huge or len(payload)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if b.huge:
                    block = b"y" * 65536
                    for _ in range(0, b.huge, len(block)):
                        self.wfile.write(block)
                elif b.drip:
                    for i in range(len(payload)):
                        self.wfile.write(payload[i:i + 1])
                        self.wfile.flush()
                        time.sleep(b.drip)
                else:
                    self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # resets from clients that gave up are expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/dispatcher"
        # A short poll interval: shutdown() waits up to one interval, at every teardown.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)

    def set(self, **kw: object) -> None:
        self.behaviour = Behaviour(**kw)  # type: ignore[arg-type]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False  # an HTTP_PROXY in the environment must not reroute 127.0.0.1
    try:
        yield s
    finally:
        s.close()


def attempt(session: requests.Session, url: str, **kw: object) -> Attempt:
    """deliver() with test defaults; every Attempt is checked for the secret."""
    args: dict[str, object] = {"secret": SECRET, "delivery_id": DELIVERY, "event": "succeeded",
                               "connect_timeout": 2.0, "read_timeout": 2.0}
    args.update(kw)
    a = deliver(session, url, BODY, **args)  # type: ignore[arg-type]
    assert isinstance(a, Attempt)
    assert SECRET not in a.detail and SECRET not in repr(a)
    assert a.detail and "\n" not in a.detail
    return a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- delivered, and what the receiver got -----------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_delivered(receiver: Receiver, session: requests.Session, status: int) -> None:
    receiver.set(status=status, body=b"" if status == 204 else b"ok")
    a = attempt(session, receiver.url)
    assert (a.outcome, a.status) == ("delivered", status)


def test_receiver_gets_exact_body_and_headers(receiver: Receiver,
                                              session: requests.Session) -> None:
    a = attempt(session, receiver.url, now=lambda: T0 + 0.9)
    assert a.outcome == "delivered"
    [got] = receiver.received
    assert got.path == "/hooks/dispatcher"
    assert got.body == BODY
    h = got.headers
    assert h["Content-Type"] == "application/json"
    assert h["User-Agent"] == "vast-dispatcher-webhook"
    assert h["X-Dispatcher-Delivery"] == DELIVERY
    assert h["X-Dispatcher-Event"] == "succeeded"
    assert h["X-Dispatcher-Timestamp"] == str(T0)  # whole seconds
    assert h["X-Dispatcher-Signature"] == sign(SECRET, DELIVERY, T0, BODY)
    assert h["X-Dispatcher-Signature"].startswith("sha256=")
    assert len(h["X-Dispatcher-Signature"]) == len("sha256=") + 64
    assert SECRET not in str(h)
    # The receiving side: verify accepts it and hands back the id to de-duplicate on.
    assert verify(SECRET, h, got.body, now=T0 + 10) == DELIVERY


def test_retries_of_one_delivery_keep_the_id_and_sign_their_own_time(
        receiver: Receiver, session: requests.Session) -> None:
    attempt(session, receiver.url, now=lambda: T0)
    attempt(session, receiver.url, now=lambda: T0 + 60)
    first, second = receiver.received
    assert first.headers["X-Dispatcher-Delivery"] == second.headers["X-Dispatcher-Delivery"]
    assert first.headers["X-Dispatcher-Timestamp"] != second.headers["X-Dispatcher-Timestamp"]
    assert verify(SECRET, second.headers, second.body, now=T0 + 61) == DELIVERY


def test_sign_covers_id_and_timestamp() -> None:
    base = sign(SECRET, DELIVERY, T0, BODY)
    assert sign(SECRET, DELIVERY, T0, BODY) == base
    assert sign(SECRET, "j2.succeeded", T0, BODY) != base
    assert sign(SECRET, DELIVERY, T0 + 1, BODY) != base
    assert sign(SECRET + "x", DELIVERY, T0, BODY) != base
    with pytest.raises(ValueError, match="empty"):
        sign("", DELIVERY, T0, BODY)


# --- verify: every way it refuses ----------------------------------------------------------


def signed_headers(ts: int = T0, secret: str = SECRET, body: bytes = BODY) -> dict[str, str]:
    return {"X-Dispatcher-Delivery": DELIVERY, "X-Dispatcher-Event": "succeeded",
            "X-Dispatcher-Timestamp": str(ts),
            "X-Dispatcher-Signature": sign(secret, DELIVERY, ts, body)}


def test_verify_ignores_header_case_and_reads_wsgi_environ() -> None:
    lower = {k.lower(): v for k, v in signed_headers().items()}
    assert verify(SECRET, lower, BODY, now=T0) == DELIVERY
    environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in signed_headers().items()}
    assert verify(SECRET, environ, BODY, now=T0) == DELIVERY


def test_verify_rejects_tampered_body() -> None:
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Signature does not match"):
        verify(SECRET, signed_headers(), BODY.replace(b"succeeded", b"failed"), now=T0)


def test_verify_rejects_wrong_secret() -> None:
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Signature does not match"):
        verify("another-secret", signed_headers(), BODY, now=T0)


def test_verify_rejects_replay_under_another_id() -> None:
    h = signed_headers()
    h["X-Dispatcher-Delivery"] = "j1.succeeded-again"
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Signature does not match"):
        verify(SECRET, h, BODY, now=T0)


def test_verify_rejects_old_and_future_timestamps() -> None:
    h = signed_headers()
    assert verify(SECRET, h, BODY, now=T0 + 300) == DELIVERY  # at the edge: fine
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Timestamp is too old"):
        verify(SECRET, h, BODY, now=T0 + 301)
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Timestamp is too new"):
        verify(SECRET, h, BODY, now=T0 - 301)
    assert verify(SECRET, h, BODY, now=T0 + 3000, tolerance=3600) == DELIVERY


def test_verify_rejects_a_fresh_timestamp_swapped_onto_an_old_signature() -> None:
    h = signed_headers(ts=T0)
    h["X-Dispatcher-Timestamp"] = str(T0 + 1000)
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Signature does not match"):
        verify(SECRET, h, BODY, now=T0 + 1000)


@pytest.mark.parametrize("name", ["X-Dispatcher-Delivery", "X-Dispatcher-Timestamp",
                                  "X-Dispatcher-Signature"])
def test_verify_names_a_missing_header(name: str) -> None:
    h = signed_headers()
    del h[name]
    with pytest.raises(WebhookSignatureError, match=f"{name} header is missing"):
        verify(SECRET, h, BODY, now=T0)
    h[name] = "  "
    with pytest.raises(WebhookSignatureError, match=f"{name} header is missing"):
        verify(SECRET, h, BODY, now=T0)


@pytest.mark.parametrize("value", ["soon", "1.7e9", "+1700000000", "1_700_000_000",
                                   "\u0661\u0662\u0663"])
def test_verify_rejects_a_timestamp_that_is_not_plain_seconds(value: str) -> None:
    h = signed_headers()
    h["X-Dispatcher-Timestamp"] = value
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Timestamp header is not"):
        verify(SECRET, h, BODY, now=T0)


@pytest.mark.parametrize("value", ["md5=abc", "deadbeef", "sha256=\u00e9\u00e9"])
def test_verify_rejects_a_malformed_signature(value: str) -> None:
    h = signed_headers()
    h["X-Dispatcher-Signature"] = value
    with pytest.raises(WebhookSignatureError, match="X-Dispatcher-Signature"):
        verify(SECRET, h, BODY, now=T0)


def test_verify_refuses_an_empty_secret() -> None:
    # A receiver whose secret env var is unset must not accept anything "signed" with "".
    forged = {"X-Dispatcher-Delivery": DELIVERY, "X-Dispatcher-Timestamp": str(T0),
              "X-Dispatcher-Signature": "sha256=" + "0" * 64}
    with pytest.raises(ValueError, match="empty") as e:
        verify("", forged, BODY, now=T0)
    assert not isinstance(e.value, WebhookSignatureError)


# --- the receiver's answer decides -------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_errors_and_throttling_are_retried(receiver: Receiver, session: requests.Session,
                                                 status: int) -> None:
    receiver.set(status=status, body=b"busy", headers={"Retry-After": "30"})
    a = attempt(session, receiver.url)
    assert (a.outcome, a.status) == ("retry", status)
    assert f"HTTP {status}" in a.detail


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_client_errors_fail_with_status_and_body(receiver: Receiver, session: requests.Session,
                                                 status: int) -> None:
    receiver.set(status=status, body=b'{"error": "unknown\nhook"}' + b"z" * 500)
    a = attempt(session, receiver.url)
    assert (a.outcome, a.status) == ("failed", status)
    assert f"HTTP {status}" in a.detail
    assert '{"error": "unknown hook"}' in a.detail
    assert len(a.detail) < 300  # at most 200 chars of the answer


def test_redirect_fails_and_is_not_followed(receiver: Receiver,
                                           session: requests.Session) -> None:
    receiver.set(status=301, headers={"Location": receiver.url + "/elsewhere"})
    a = attempt(session, receiver.url)
    assert (a.outcome, a.status) == ("failed", 301)
    assert "HTTP 301" in a.detail and "/elsewhere" in a.detail
    assert len(receiver.received) == 1  # the Location was never requested


def test_secret_echoed_by_the_receiver_is_redacted(receiver: Receiver,
                                                  session: requests.Session,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.set(status=403, body=f"bad secret, expected {SECRET}".encode())
    a = attempt(session, receiver.url)
    assert a.outcome == "failed" and "[secret]" in a.detail
    assert SECRET not in caplog.text


# --- no answer ----------------------------------------------------------------------------


def test_connection_refused_is_retried(session: requests.Session) -> None:
    a = attempt(session, f"http://127.0.0.1:{free_port()}/hook")
    assert (a.outcome, a.status) == ("retry", None)
    assert a.detail == "connection refused"


def test_hang_up_without_answer_is_retried(receiver: Receiver,
                                          session: requests.Session) -> None:
    # requests raises ConnectionError(ProtocolError(RemoteDisconnected)) here: no answer
    # at all, classified with connection errors (see the comment in webhook_http._post).
    receiver.set(hang_up=True)
    a = attempt(session, receiver.url)
    assert (a.outcome, a.status) == ("retry", None)
    assert "without answering" in a.detail or "reset" in a.detail
    assert len(receiver.received) == 1  # exactly one POST: nothing retried under the hood


def test_read_timeout_fails_and_says_why(receiver: Receiver, session: requests.Session) -> None:
    receiver.set(delay=1.0)
    t = time.monotonic()
    a = attempt(session, receiver.url, read_timeout=0.3)
    assert time.monotonic() - t < 0.9
    assert (a.outcome, a.status) == ("failed", None)
    assert "read timeout" in a.detail and "not retried" in a.detail
    assert len(receiver.received) == 1


def test_connect_timeout_is_retried(session: requests.Session) -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so connect() hangs.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        try:
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    pytest.skip("this kernel accepts beyond the backlog; no connect timeout")
            a = attempt(session, f"http://127.0.0.1:{port}/hook", connect_timeout=0.3)
        finally:
            for c in fillers:
                c.close()
    assert (a.outcome, a.status) == ("retry", None)
    assert "connect timeout" in a.detail


def test_dns_failure_is_retried(session: requests.Session,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver is the one thing stubbed: a real lookup would depend on this sandbox.
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kw: object) -> object:
        if host == "hooks.unresolvable.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    a = attempt(session, "http://hooks.unresolvable.test/hook")
    assert (a.outcome, a.status, a.detail) == ("retry", None, "DNS lookup failed")


def test_tls_error_fails(receiver: Receiver, session: requests.Session) -> None:
    # https:// to a plain-HTTP port: the handshake fails.
    a = attempt(session, receiver.url.replace("http://", "https://"))
    assert (a.outcome, a.status) == ("failed", None)
    assert a.detail.startswith("TLS error")


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "http://",
                                 "http://exa mple.com/", "http://a..b/hook", ""])
def test_invalid_url_fails(session: requests.Session, url: str) -> None:
    a = attempt(session, url)
    assert (a.outcome, a.status) == ("failed", None)
    assert "invalid webhook URL" in a.detail


def test_unsendable_header_fails_without_raising(receiver: Receiver,
                                                session: requests.Session) -> None:
    for event in ["succeeded\r\nX-Evil: 1", "\u65e5\u672c"]:
        a = attempt(session, receiver.url, event=event)
        assert (a.outcome, a.status) == ("failed", None)
    assert receiver.received == []


def test_empty_secret_is_never_sent(receiver: Receiver, session: requests.Session) -> None:
    a = deliver(session, receiver.url, BODY, secret="", delivery_id=DELIVERY, event="succeeded")
    assert (a.outcome, a.status) == ("failed", None)
    assert receiver.received == []


# --- big, endless and slow answers -------------------------------------------------------


@pytest.mark.parametrize("status,outcome", [(200, "delivered"), (503, "retry"),
                                            (400, "failed")])
def test_huge_answer_is_not_read_whole(receiver: Receiver, session: requests.Session,
                                       status: int, outcome: str) -> None:
    receiver.set(status=status, huge=10 * 1024 * 1024)
    t = time.monotonic()
    a = attempt(session, receiver.url)
    assert time.monotonic() - t < 2
    assert (a.outcome, a.status) == (outcome, status)
    assert MAX_ANSWER_BYTES < 10 * 1024 * 1024


def test_endless_answer_does_not_hang(receiver: Receiver, session: requests.Session) -> None:
    receiver.set(status=404, endless=True)
    t = time.monotonic()
    a = attempt(session, receiver.url)
    assert time.monotonic() - t < 2
    assert (a.outcome, a.status) == ("failed", 404)


def test_dripping_answer_is_cut_at_the_read_timeout(receiver: Receiver,
                                                    session: requests.Session) -> None:
    # One byte per 0.1s never trips the socket's read timeout, yet would take 100s whole.
    receiver.set(status=200, body=b"." * 1000, drip=0.1)
    t = time.monotonic()
    a = attempt(session, receiver.url, read_timeout=0.5)
    assert time.monotonic() - t < 1.5
    assert (a.outcome, a.status) == ("delivered", 200)


def test_connection_is_released_and_reused(receiver: Receiver,
                                          session: requests.Session) -> None:
    receiver.set(status=200, body=b"ok")
    for _ in range(3):
        assert attempt(session, receiver.url).outcome == "delivered"
    # Small answers are read to the end and the connection goes back to the pool, so
    # keep-alive carries the next attempt: one client port for all three.
    assert len({r.client for r in receiver.received}) == 1


# --- backoff -------------------------------------------------------------------------------


def test_retry_delay_grows_with_full_jitter_and_is_capped() -> None:
    random.seed(7)
    for n in range(12):
        samples = [retry_delay(n) for _ in range(300)]
        assert all(0.5 <= d <= min(300.0, 2.0 ** n) for d in samples)
        if 2 <= n <= 8:  # full jitter: the spread reaches most of the window
            assert max(samples) > 0.8 * 2.0 ** n
    means = [sum(retry_delay(n) for _ in range(300)) / 300 for n in range(9)]
    assert means == sorted(means)
    assert all(0.5 <= retry_delay(n) <= 300.0 for n in (20, 100, 10_000))
    assert max(retry_delay(50) for _ in range(300)) > 150  # jitter still spans the cap
    assert all(2.5 <= retry_delay(n, base=5, cap=60) <= 60 for n in range(30))
