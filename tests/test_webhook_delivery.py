"""Webhook delivery against real local HTTP servers: signing, one attempt, its
classification, where it may go (issue 11 item 3), its deadline and attempt cap (item 4),
and no environment read (item 16).

No mocks of the HTTP side: every attempt crosses a real socket to a ThreadingHTTPServer
(``Receiver`` here, or ``tests/peer.py``) whose behaviour each test sets. Only the resolver
is stubbed where a test needs a host name to resolve to a chosen address.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import random
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dispatcher.config import Settings
from dispatcher.dev.redis_server import RedisServer
from dispatcher.errors import ConfigError, InvalidJob, WebhookSignatureError
from dispatcher.model import Status
from dispatcher.net import Pool
from dispatcher.runtime import Runtime
from dispatcher.ssrf import AllowList, refused_kind
from dispatcher.store import Store, connect, keys
from dispatcher.validation import check_webhook
from dispatcher.vast import VastClient
from dispatcher.webhooks.delivery import (
    MAX_ANSWER_BYTES,
    NO_ANSWER,
    NO_CONNECTION,
    Attempt,
    deliver,
    retry_delay,
)
from dispatcher.webhooks.signing import sign, verify
from dispatcher.worker.app import make_app
from dispatcher.worker.mover import DueMover
from dispatcher.worker.publish import CeleryPublisher
from tests.peer import peer

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
def pool() -> Iterator[Pool]:
    p = Pool(per_origin=4, user_agent="vast-dispatcher-webhook")
    try:
        yield p
    finally:
        p.close()


# The receivers here listen on loopback: refused by default, so tests allow it.
LOOPBACK = "127.0.0.0/8"


def attempt(url: str, **kw: object) -> Attempt:
    """deliver() with test defaults; every Attempt is checked for the secret."""
    args: dict[str, object] = {"secret": SECRET, "delivery_id": DELIVERY, "event": "succeeded",
                               "timeout": 2.0, "allow": LOOPBACK}
    args.update(kw)
    a = deliver(url, BODY, **args)  # type: ignore[arg-type]
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
def test_2xx_is_delivered(receiver: Receiver, status: int) -> None:
    receiver.set(status=status, body=b"" if status == 204 else b"ok")
    a = attempt(receiver.url)
    assert (a.outcome, a.status) == ("delivered", status)


def test_receiver_gets_exact_body_and_headers(receiver: Receiver) -> None:
    a = attempt(receiver.url, now=lambda: T0 + 0.9)
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
        receiver: Receiver) -> None:
    attempt(receiver.url, now=lambda: T0)
    attempt(receiver.url, now=lambda: T0 + 60)
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
def test_server_errors_and_throttling_are_retried(receiver: Receiver,
                                                 status: int) -> None:
    receiver.set(status=status, body=b"busy", headers={"Retry-After": "30"})
    a = attempt(receiver.url)
    assert (a.outcome, a.status) == ("retry", status)
    assert f"HTTP {status}" in a.detail


INTERNAL = "internal-service-answer-7d1c"  # what an internal service would say


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 500, 503])
def test_the_status_is_kept_never_the_receivers_body(receiver: Receiver, status: int) -> None:
    """Issue 11 item 3: the first 200 characters of an internal service's answer were
    stored in webhook_last_error, for the submitter to read."""
    receiver.set(status=status, body=f'{{"error": "{INTERNAL}"}}'.encode(),
                 headers={"X-Internal": INTERNAL})
    a = attempt(receiver.url)
    assert a.status == status and a.outcome == ("retry" if status >= 500 else "failed")
    assert a.detail.startswith(f"HTTP {status} from receiver")
    assert INTERNAL not in a.detail and "error" not in a.detail


def test_redirect_fails_and_is_not_followed(receiver: Receiver) -> None:
    receiver.set(status=301, headers={"Location": receiver.url + f"/{INTERNAL}"})
    a = attempt(receiver.url)
    assert (a.outcome, a.status) == ("failed", 301)
    assert "HTTP 301" in a.detail and "not followed" in a.detail
    assert INTERNAL not in a.detail  # the Location is the receiver's text too
    assert len(receiver.received) == 1  # the Location was never requested


def test_secret_echoed_by_the_receiver_is_never_kept(receiver: Receiver,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.set(status=403, body=f"bad secret, expected {SECRET}".encode())
    a = attempt(receiver.url)
    assert a.outcome == "failed" and a.detail == "HTTP 403 from receiver, not retried"
    assert SECRET not in caplog.text


# --- no answer ----------------------------------------------------------------------------


def test_connection_refused_is_retried() -> None:
    a = attempt(f"http://127.0.0.1:{free_port()}/hook")
    assert (a.outcome, a.status, a.detail) == ("retry", None, NO_CONNECTION)


def test_hang_up_without_answer_is_retried(receiver: Receiver) -> None:
    # No answer at all: the receiver cannot have said it acted (a stale keep-alive
    # connection, a restart), so it is retried.
    receiver.set(hang_up=True)
    a = attempt(receiver.url)
    assert (a.outcome, a.status, a.detail) == ("retry", None, NO_ANSWER)
    assert len(receiver.received) == 1  # exactly one POST: nothing retried under the hood


def test_no_answer_in_time_fails_and_says_why(receiver: Receiver) -> None:
    receiver.set(delay=3.0)
    a = attempt(receiver.url, timeout=0.3)
    assert (a.outcome, a.status) == ("failed", None)
    assert "timeout" in a.detail and "not retried" in a.detail
    assert "DISPATCHER_WEBHOOK_TIMEOUT" in a.detail
    assert len(receiver.received) == 1


def test_connect_timeout_is_retried() -> None:
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
            a = attempt(f"http://127.0.0.1:{port}/hook", connect_timeout=0.3)
        finally:
            for c in fillers:
                c.close()
    # The same words as a refused connection: which ports are filtered and which are
    # closed is not for a submitter to learn (issue 11 item 3: no port scanner).
    assert (a.outcome, a.status, a.detail) == ("retry", None, NO_CONNECTION)


def test_dns_failure_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver is the one thing stubbed: a real lookup would depend on this sandbox.
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kw: object) -> object:
        if host == "hooks.unresolvable.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    a = attempt("http://hooks.unresolvable.test/hook")
    assert (a.outcome, a.status, a.detail) == ("retry", None, "DNS lookup failed")


def test_tls_error_fails(receiver: Receiver) -> None:
    # https:// to a plain-HTTP port: the handshake fails.
    a = attempt(receiver.url.replace("http://", "https://"))
    assert (a.outcome, a.status) == ("failed", None)
    assert a.detail.startswith("TLS error")


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "http://",
                                 "http://exa mple.com/", "http://a..b/hook", ""])
def test_invalid_url_fails(url: str) -> None:
    a = attempt(url)
    assert (a.outcome, a.status) == ("failed", None)
    assert "invalid webhook URL" in a.detail


def test_unsendable_header_fails_without_raising(receiver: Receiver) -> None:
    for event in ["succeeded\r\nX-Evil: 1", "\u65e5\u672c"]:
        a = attempt(receiver.url, event=event)
        assert (a.outcome, a.status) == ("failed", None)
    assert receiver.received == []


def test_empty_secret_is_never_sent(receiver: Receiver) -> None:
    a = deliver(receiver.url, BODY, secret="", delivery_id=DELIVERY, event="succeeded")
    assert (a.outcome, a.status) == ("failed", None)
    assert receiver.received == []


# --- big, endless and slow answers -------------------------------------------------------


@pytest.mark.parametrize("status,outcome", [(200, "delivered"), (503, "retry"),
                                            (400, "failed")])
def test_huge_answer_is_not_read_whole(receiver: Receiver,
                                       status: int, outcome: str) -> None:
    receiver.set(status=status, huge=10 * 1024 * 1024)
    t = time.monotonic()
    a = attempt(receiver.url)
    assert time.monotonic() - t < 2
    assert (a.outcome, a.status) == (outcome, status)
    assert MAX_ANSWER_BYTES < 10 * 1024 * 1024


def test_endless_answer_does_not_hang(receiver: Receiver) -> None:
    receiver.set(status=404, endless=True)
    t = time.monotonic()
    a = attempt(receiver.url)
    assert time.monotonic() - t < 2
    assert (a.outcome, a.status) == ("failed", 404)


def test_dripping_answer_is_cut_at_the_deadline(receiver: Receiver) -> None:
    # One byte per 0.1s never trips a socket's read timeout, yet would take 100s whole.
    receiver.set(status=200, body=b"." * 1000, drip=0.1)
    t = time.monotonic()
    a = attempt(receiver.url, timeout=0.5)
    assert time.monotonic() - t < 10
    assert (a.outcome, a.status) == ("delivered", 200)  # the status stands


def test_connection_is_released_and_reused(receiver: Receiver) -> None:
    receiver.set(status=200, body=b"ok")
    for _ in range(3):
        assert attempt(receiver.url).outcome == "delivered"
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


# --- where a webhook may go (issue 11 item 3) ----------------------------------------------


def resolve_as(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> list[str]:
    """Make host names resolve to chosen addresses (each entry: the answers of successive
    lookups, the last repeated); returns the log of names looked up. The system resolver
    is the one thing stubbed: the connection still crosses a real socket."""
    real = socket.getaddrinfo
    asked: list[str] = []
    lookups: dict[str, int] = {}

    def getaddrinfo(host: object, port: object, *args: object, **kw: object) -> object:
        if isinstance(host, str) and host in names:
            asked.append(host)
            n = lookups[host] = lookups.get(host, -1) + 1
            ip = names[host][min(n, len(names[host]) - 1)]
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sockaddr = (ip, int(port or 0), 0, 0) if ":" in ip else (ip, int(port or 0))
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]
        return real(host, port, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


LOOPBACK_SPELLINGS = ["127.0.0.1", "localhost", "0x7f000001", "2130706433", "0177.0.0.1",
                      "127.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_in_any_spelling_is_refused_by_default(receiver: Receiver, host: str) -> None:
    """The check is on the resolved address, not the URL's text: every spelling of
    127.0.0.1 (and ::1, and 127.0.0.1 mapped into IPv6) is refused without a request."""
    url = f"http://{host}:{receiver.port}/hook"
    a = attempt(url, allow="")
    assert (a.outcome, a.status) == ("failed", None)  # failed: never retried
    assert "loopback" in a.detail and "DISPATCHER_WEBHOOK_ALLOW" in a.detail
    assert receiver.received == []
    if ":" not in host:  # the same URL goes through once loopback is allowed
        assert attempt(url, allow=LOOPBACK).outcome == "delivered"
        assert len(receiver.received) == 1


@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("fc00::1", "unique-local"), ("fd12:3456::1", "unique-local"),
    ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"), ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("100.64.0.1", "shared (100.64.0.0/10)"), ("100.127.255.254", "shared (100.64.0.0/10)"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.2.1", "private"),
    ("fec0::1", "site-local"), ("::127.0.0.1", "reserved"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:100.64.0.1", "shared (100.64.0.0/10)"),
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_refused_address_kinds(address: str, kind: str | None) -> None:
    ip = ipaddress.ip_address(address)
    assert refused_kind(ip) == kind
    if kind is not None:  # the allow-list is what lets one through
        net = f"{address}/128" if ip.version == 6 else f"{address}/32"
        assert AllowList.parse(net).refusal(ip) is None
        assert AllowList.parse("203.0.113.0/24").refusal(ip) == kind


def test_a_name_is_judged_by_every_address_it_resolves_to(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_as(monkeypatch, {"metadata.test": ["169.254.169.254"],
                             "private.test": ["10.20.30.40"]})
    for host, kind in (("metadata.test", "link-local"), ("private.test", "private")):
        a = attempt(f"http://{host}/latest/meta-data/", allow="")
        assert (a.outcome, a.status) == ("failed", None)
        assert kind in a.detail and "DISPATCHER_WEBHOOK_ALLOW" in a.detail
        # The detail names the kind, not what an internal name resolves to.
        assert "169.254" not in a.detail and "10.20" not in a.detail


def test_one_refused_address_among_public_ones_refuses_the_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: object, port: object, *args: object, **kw: object) -> object:
        if host == "mixed.test":  # a public answer first, loopback behind it
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    a = attempt("http://mixed.test/hook", allow="")
    assert (a.outcome, a.status) == ("failed", None) and "loopback" in a.detail


def test_the_allow_list_takes_cidrs_and_exact_host_names(receiver: Receiver) -> None:
    port = receiver.port
    assert attempt(f"http://127.0.0.1:{port}/a", allow="127.0.0.1/32").outcome == "delivered"
    assert attempt(f"http://127.0.0.1:{port}/b", allow="127.0.0.1").outcome == "delivered"
    assert attempt(f"http://localhost:{port}/c", allow="LOCALHOST.").outcome == "delivered"
    assert attempt(f"http://[::ffff:127.0.0.1]:{port}/d",
                   allow="10.0.0.0/8, 127.0.0.0/8").outcome == "delivered"
    assert len(receiver.received) == 4
    for allow in ("10.0.0.0/8", "127.0.0.2/32", "hooks.internal", "sub.localhost"):
        a = attempt(f"http://localhost:{port}/e", allow=allow)
        assert a.outcome == "failed" and "DISPATCHER_WEBHOOK_ALLOW" in a.detail, allow
    assert len(receiver.received) == 4


def test_the_checked_address_is_the_one_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the first lookup answers an allowed address, any later one an
    internal one. The request must go to the address that was checked, with the URL's
    host as Host header: a second lookup (connecting by name) would reach ``inside``."""
    with peer(host="127.0.0.2") as inside, peer(host="127.0.0.1", port=inside.port) as ok:
        asked = resolve_as(monkeypatch, {"rebind.test": ["127.0.0.1", "127.0.0.2"]})
        a = attempt(f"http://rebind.test:{ok.port}/hook", allow="127.0.0.1/32")
        assert (a.outcome, a.status) == ("delivered", 200)
        assert [s.headers["Host"] for s in ok.seen] == [f"rebind.test:{ok.port}"]
        assert inside.seen == [] and asked == ["rebind.test"]


def _tls_for(name: str) -> tuple[Any, Any]:
    """A CA, a server context with a leaf for ``name`` under it, a client trusting it."""
    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> Any:
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = cert("test webhook CA", ca_key, "test webhook CA", ca_key, True)
    leaf = cert(name, leaf_key, "test webhook CA", ca_key, False)
    folder = Path(tempfile.mkdtemp(prefix="webhook-tls-"))
    pem = serialization.Encoding.PEM
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem) + leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "leaf.pem")
    shutil.rmtree(folder)
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def test_tls_checks_the_urls_host_name_at_the_checked_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, client = _tls_for("hooks.test")
    resolve_as(monkeypatch, {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with peer(tls_context=server) as p:
        a = attempt(f"https://hooks.test:{p.port}/hook", allow="127.0.0.1", tls=client)
        assert (a.outcome, a.status) == ("delivered", 200)
        assert p.seen[0].headers["Host"] == f"hooks.test:{p.port}"
        # Same address, another name: the certificate is for hooks.test, not for it.
        a = attempt(f"https://other.test:{p.port}/hook", allow="127.0.0.1", tls=client)
        assert (a.outcome, a.status) == ("failed", None)
        assert a.detail.startswith("TLS error") and "other.test" in a.detail
        assert len(p.seen) == 1


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://0x7f000001/x", "http://2130706433:8080/x",
    "http://0177.0.0.1/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x",
    "https://169.254.169.254/latest/meta-data/", "http://10.0.0.5:6379/", "http://[fd00::1]/",
    "http://100.64.0.1/", "http://224.0.0.1/", "http://0.0.0.0:80/"])
def test_a_refused_literal_address_fails_at_submit(url: str) -> None:
    s = Settings(webhook_secret="k")
    with pytest.raises(InvalidJob) as e:
        check_webhook(s, url, ["completed"])
    assert e.value.field == "webhook" and "DISPATCHER_WEBHOOK_ALLOW" in str(e.value)
    allowed = s.with_(webhook_allow="0.0.0.0/0,::/0")
    assert check_webhook(allowed, url, ["completed"])[0] == url


def test_submit_checks_the_hosts_shape_and_leaves_names_to_the_delivery() -> None:
    s = Settings(webhook_secret="k")
    for url in ("http://a..b/x", "http://-a.example/x", "http://a_b%41.example/x",
                "http://[::1/x", "http://h:99999/x"):
        with pytest.raises(InvalidJob) as e:
            check_webhook(s, url, ["completed"])
        assert e.value.field == "webhook", url
    # A name is resolved (and checked) at each delivery, not at submit.
    for url in ("http://localhost:9/x", "https://hooks.example.com/x", "http://8.8.8.8/x"):
        assert check_webhook(s, url, ["completed"])[0] == url


def test_the_allow_list_setting_is_checked() -> None:
    s = Settings.from_env({"DISPATCHER_WEBHOOK_ALLOW": " 10.0.0.0/8, hooks.internal ,"})
    assert s.webhook_allow.strip().startswith("10.0.0.0/8")
    for bad in ("10.0.0.0/33", "hooks internal", "*.internal", "http://x/"):
        with pytest.raises(ConfigError, match="DISPATCHER_WEBHOOK_ALLOW"):
            Settings.from_env({"DISPATCHER_WEBHOOK_ALLOW": bad})


# --- one deadline per attempt (issue 11 item 4) -----------------------------------------


def test_a_header_drip_ends_at_the_attempt_deadline() -> None:
    """A header line a second never trips a per-read timeout: 30 lines held a delivery
    for 30 s. The attempt ends at its deadline, the watchdog shutting the socket."""
    with peer() as p:
        p.reply(status=200, header_drip=1.0)
        t = time.monotonic()
        a = attempt(p.url + "/hook", timeout=2.0)
        took = time.monotonic() - t
    assert (a.outcome, a.status) == ("failed", None)  # sent: the receiver may have acted
    assert "timeout" in a.detail and "not retried" in a.detail
    assert took < 20  # the drip alone lasts 30 s


def test_the_lookup_is_inside_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def slow(host: object, *args: object, **kw: object) -> object:
        if host == "slow-dns.test":
            time.sleep(8)
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    t = time.monotonic()
    a = attempt("http://slow-dns.test/hook", timeout=1.0)
    assert time.monotonic() - t < 6
    assert (a.outcome, a.status) == ("retry", None) and "DNS" in a.detail


# --- no environment read (issue 11 item 16) ---------------------------------------------


def test_no_netrc_and_no_proxy_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A ``~/.netrc`` default entry would give any receiver the credentials; a proxy
    variable would send every delivery (and its signature) through someone else."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("default login netrc-user password netrc-canary-3e1f\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    with peer() as receiver, peer() as proxy:
        for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(var, proxy.url)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        a = attempt(receiver.url + "/hook")
        assert (a.outcome, a.status) == ("delivered", 200)
        (seen,) = receiver.seen
        assert "Authorization" not in seen.headers and "authorization" not in seen.headers
        assert "netrc-canary" not in str(seen.headers)
        assert proxy.seen == []


# --- the attempt cap and the deliveries' own queue (issue 11 item 4), on a real Redis ---


def _store(redis_server: RedisServer, **kw: Any) -> Store:
    return Store(connect(redis_server.url, 8), f"hq-{uuid.uuid4().hex[:8]}", **kw)


def _hooked_job(store: Store, job_id: str, events: str = "completed") -> None:
    fields = {"id": job_id, "status": Status.QUEUED, "endpoint": "e", "cost": 1.0,
              "path": "/x", "payload": "{}", "max_wait": 600.0, "timeout": 5.0,
              "priority": 0, "queue": store.queue, "webhook": "http://h/x",
              "webhook_events": events}
    assert store.create(job_id, fields, 60)


def _take_and_vanish(store: Store, job_id: str, max_attempts: int
                     ) -> tuple[str, dict[str, str]]:
    """What a worker that dies (or overruns its lease) mid-attempt leaves: a take and no
    outcome. The mover hands the delivery out again when the lease ends."""
    deadline = time.monotonic() + 10
    while True:
        due = [e for e in store.move_due(10, 60, hooks=True) if e.id == job_id]
        if due:
            break
        assert time.monotonic() < deadline, "the delivery never came due again"
        time.sleep(0.05)
    outcome, _, fields = store.hook_take(job_id, due[0].seq, 0.2, max_attempts)
    return outcome, fields


def test_the_attempt_cap_holds_however_many_leases_ran_out(redis_server: RedisServer) -> None:
    """Issue 11 item 4: every lease end started one more attempt; 12 takes gave
    webhook_attempts=12 with a limit of 8. The take after the last allowed one ends
    the delivery failed, and no request is made."""
    store = _store(redis_server)
    _hooked_job(store, "cap")
    # grace 0: the delivery is due at once (its first message would go out directly).
    assert store.finish("cap", "succeeded", 60, {"result": "ok", "result_type": "text"},
                        grace=0).hook
    for n in range(1, 4):
        outcome, fields = _take_and_vanish(store, "cap", max_attempts=3)
        assert outcome == "ok" and fields["webhook_attempts"] == str(n)
    outcome, fields = _take_and_vanish(store, "cap", max_attempts=3)
    assert (outcome, fields) == ("done", {"webhook_status": "failed"})
    job = store.get("cap")
    assert job.webhook_status == "failed" and job.webhook_attempts == 3
    assert "DISPATCHER_WEBHOOK_ATTEMPTS" in (job.webhook_last_error or "")
    assert job.status == "succeeded" and job.result == "ok"
    assert store.redis.zscore(store.hooks, "cap") is None
    assert store.move_due(10, 60, hooks=True) == []


def test_a_capped_started_delivery_lets_the_end_event_go(redis_server: RedisServer) -> None:
    store = _store(redis_server)
    _hooked_job(store, "both", events="started,completed")
    assert store.claim("both", 0, 30, "t").outcome == "ok"
    assert store.mark_running("both", "t", 30, {}) is not None
    assert store.get("both").webhook_delivery_id == "both.started"
    assert store.finish("both", "succeeded", 60, {"result": "ok"}, grace=0,
                        token="t").outcome == "ok"
    for _ in range(2):
        assert _take_and_vanish(store, "both", max_attempts=2)[0] == "ok"
    assert _take_and_vanish(store, "both", max_attempts=2)[0] == "done"
    job = store.get("both")  # the end event is next, with its attempts of its own
    assert job.webhook_delivery_id == "both.succeeded" and job.webhook_status == "pending"
    outcome, fields = _take_and_vanish(store, "both", max_attempts=2)
    assert outcome == "ok" and fields["webhook_attempts"] == "1"


def test_deliveries_go_to_their_own_queue_and_its_backlog_holds_them(
        redis_server: RedisServer) -> None:
    """The movers publish due deliveries to DISPATCHER_WEBHOOK_QUEUE (served by
    ``dispatcher worker --webhooks``), and their backpressure counts that queue: a full
    job queue does not hold deliveries back, a full delivery queue does."""
    queue = f"mq-{uuid.uuid4().hex[:8]}"
    s = Settings.from_env({"REDIS_URL": redis_server.url, "DISPATCHER_QUEUE": queue,
                           "DISPATCHER_MAX_BACKLOG": "5"})
    assert s.webhook_queue == f"{queue}.webhooks"
    r = connect(redis_server.url, 8)
    store = Store(r, queue, hook_queue=s.webhook_queue)
    app = make_app(s)
    rt = Runtime(s, store, VastClient.from_settings(s),
                 CeleryPublisher(app, queue, s.webhook_queue))

    def queued(q: str) -> int:
        return sum(int(r.llen(k)) for k in keys.broker_lists(q))

    try:
        for n in range(3):
            _hooked_job(store, f"m{n}")
            assert store.finish(f"m{n}", "succeeded", 60, {}, grace=0).hook
        r.rpush(queue, *["filler"] * 10)  # the job queue is over its backlog
        assert DueMover(rt).tick() == 3
        assert queued(s.webhook_queue) == 3
        assert queued(queue) == 10  # nothing went to the job queue
        bodies = [r.lrange(k, 0, -1) for k in keys.broker_lists(s.webhook_queue)]
        assert all("dispatcher.webhook" in m for b in bodies for m in b)
        # A full delivery queue stops the delivery movers, in due order, in Redis.
        r.rpush(s.webhook_queue, *["filler"] * 5)
        _hooked_job(store, "late")
        assert store.finish("late", "succeeded", 60, {}, grace=0).hook
        assert store.move_due(10, 60, s.max_backlog, hooks=True) == []
        assert store.hooks_waiting() == 4
    finally:
        for q in (queue, s.webhook_queue):
            r.delete(*keys.broker_lists(q))
        app.close()
