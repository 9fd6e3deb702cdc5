"""dispatcher/net.py: the watchdog behind every HTTP exchange's deadline, and the HTTP/1.1
framing (against raw TCP peers that send exactly the bytes a test gives)."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dispatcher.net import WATCHDOG, NetError, Pool, Target, Watchdog, read_all


def test_a_guard_fires_at_its_deadline_and_not_before() -> None:
    w = Watchdog()
    g = w.guard(2.0)  # far past the 0.1 s sleep, however late that sleep wakes
    time.sleep(0.1)
    assert g.fired is None
    deadline = time.monotonic() + 5
    while g.fired is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g.fired == "deadline"


def test_an_abort_fires_at_once_and_a_finished_guard_never_fires() -> None:
    w = Watchdog()
    g = w.guard(60)
    g.abort("cancelled")
    assert (g.fired, g.reason) == ("aborted", "cancelled")
    done = w.guard(0.05)
    done.done()
    time.sleep(0.3)
    assert done.fired is None


def test_finished_guards_do_not_pile_up() -> None:
    """A long timeout must not keep every finished call's guard until its deadline."""
    w = Watchdog()
    for _ in range(20_000):
        w.guard(600).done()
    live = [w.guard(600) for _ in range(10)]
    assert len(w) <= 2 * len(live) + 65
    for g in live:
        g.done()


# --- HTTP/1.1 framing, against a raw TCP peer that sends exactly the bytes given -------


class RawPeer:
    """Answers each request on a connection with the next of ``answers`` (raw bytes);
    counts connections, so tests see whether one was reused."""

    def __init__(self, answers: list[bytes], close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while self.answers:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                conn.sendall(self.answers.pop(0))
                if self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(4)
    yield p
    p.close()


def post(pool: Pool, url: str, limit: int = 1 << 20) -> tuple[int, bytes, object]:
    with pool.exchange("POST", Target.parse(url + "/x"), body=b"{}", headers={},
                       guard=WATCHDOG.guard(5), connect_timeout=2, read_timeout=5) as ex:
        body, _ = read_all(ex, limit)
        return ex.status, body, ex.headers


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(("answer", "body"), [
    (OK, b"ok"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n", b"abcde"),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", b"abc"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", b"ok"),  # bare LF line ends
], ids=["length", "100-continue", "chunked-ext-trailer", "lowercase", "204", "bare-lf"])
def test_framings_that_keep_the_connection(pool: Pool, answer: bytes, body: bytes) -> None:
    peer = RawPeer([answer, OK])
    try:
        assert post(pool, peer.url)[:2] == (200 if b"204" not in answer else 204, body)
        assert post(pool, peer.url)[:2] == (200, b"ok")
        assert peer.connections == 1  # reused: the answer ended where its framing said
    finally:
        peer.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",  # bytes nobody asked for
], ids=["http1.0-close-delimited", "connection-close", "extra-bytes"])
def test_framings_that_end_the_connection(pool: Pool, answer: bytes) -> None:
    peer = RawPeer([answer, OK, OK], close_after=b"EXTRA" not in answer)
    try:
        status, body, _ = post(pool, peer.url)
        assert status == 200 and body in (b"until close", b"ok")
        assert post(pool, peer.url)[:2] == (200, b"ok")
        assert peer.connections == 2  # never reused after an answer that did not end cleanly
    finally:
        peer.close()


def test_a_gzip_answer_sent_against_identity_is_decoded_within_the_limit(pool: Pool) -> None:
    data = b"x" * 100_000
    z = gzip.compress(data)
    peer = RawPeer([b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: "
                    + str(len(z)).encode() + b"\r\n\r\n" + z] * 2)
    try:
        assert post(pool, peer.url)[1] == data
        with pool.exchange("POST", Target.parse(peer.url + "/x"), body=b"{}", headers={},
                           guard=WATCHDOG.guard(5), connect_timeout=2, read_timeout=5) as ex:
            body, cut = read_all(ex, 1000)  # a bomb is cut at the limit, decoded
        assert cut and body == b"x" * 1000
    finally:
        peer.close()


@pytest.mark.parametrize(("answer", "match"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "missing"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "16 KiB|too large"),
    (b"HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n", "folded"),
    (b"SMTP ready\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx", "encoding"),
], ids=["short", "two-lengths", "bad-chunk", "huge-header", "folded", "not-http", "br"])
def test_answers_that_do_not_parse_are_broken_not_guessed(pool: Pool, answer: bytes,
                                                          match: str) -> None:
    peer = RawPeer([answer], close_after=True)
    try:
        with pytest.raises(NetError, match=match) as e:
            post(pool, peer.url)
        assert e.value.kind == "broken" and e.value.sent
    finally:
        peer.close()


def test_a_line_break_in_a_header_is_never_sent(pool: Pool) -> None:
    with pytest.raises(ValueError, match="line break"):
        pool.exchange("POST", Target.parse("http://127.0.0.1:1/x"), body=b"",
                      headers={"X-Evil": "a\r\nInjected: 1"}, guard=WATCHDOG.guard(1),
                      connect_timeout=1, read_timeout=1)
