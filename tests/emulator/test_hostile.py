"""Hostile and contract answers a payload can ask for (issue 11 items 1 and 5, issue 10):
a drip of header lines, a drip of body bytes, a deeply nested body, a huge body, a body cut
short; a status with a JSON body, for the first N runs only. Each is an execution like any
other: counted, and in flight until its last byte."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from dispatcher.emulator import Emulator
from tests.poll import until

from .conftest import FAST, assign, call, dechunk, make_config, read_all, send_raw

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def vast() -> Iterator[Emulator]:
    cfg = make_config(endpoints={"h": {"workers": 1, "concurrency": 4, "latency": FAST}})
    with Emulator(cfg) as emulator:
        yield emulator


def run(vast: Emulator, pid: str, emulate: dict, **kwargs: object) -> requests.Response:
    return call(assign(vast, "h"), {"id": pid, "emulate": emulate}, **kwargs)  # type: ignore


def test_drip_sends_a_header_line_per_interval_and_counts_until_the_last_byte(
        vast: Emulator) -> None:
    sock = send_raw(assign(vast, "h"), {"id": "drip", "emulate": {
        "drip": {"interval": 0.3, "count": 4}}})
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\n\r\n" not in first  # the status line, and the headers still to come
    s = vast.stats()
    assert (s["executions"], s["in_flight"], s["dripped"], s["succeeded"]) == (1, 1, 1, 0)
    rest, ended = read_all(sock)
    sock.close()
    head, _, body = (first + rest).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert [ln for ln in lines if ln.startswith(b"X-Emulator-Drip")] == [
        b"X-Emulator-Drip: %d" % i for i in range(4)]
    assert json.loads(body)["payload"]["id"] == "drip" and ended == "eof"
    s = vast.stats()
    assert (s["in_flight"], s["succeeded"], s["peak_in_flight"]) == (0, 1, 1)
    assert s["worker_seconds_by_payload"]["drip"] >= 4 * 0.3


def test_a_drip_never_trips_a_per_read_timeout(vast: Emulator) -> None:
    t0 = time.monotonic()
    r = run(vast, "slow", {"drip": {"interval": 0.2, "count": 10}}, timeout=(5, 1.5))
    assert r.status_code == 200 and r.json()["payload"]["id"] == "slow"
    assert time.monotonic() - t0 >= 2.0  # longer than the read timeout, never tripping it
    # A status answer can drip too.
    r = run(vast, "slow-429", {"status": 429, "drip": {"interval": 0.01, "count": 3}})
    assert r.status_code == 429 and r.text == "emulated status 429"


def test_body_drip_sends_headers_at_once_then_a_byte_per_interval(vast: Emulator) -> None:
    r = run(vast, "bd", {"text": "abcdef", "body_drip": {"interval": 0.25}}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Length"] == "6"
    s = vast.stats()
    assert (s["in_flight"], s["body_dripped"], s["succeeded"]) == (1, 1, 0)
    assert r.raw.read(1) == b"a"
    assert vast.stats()["in_flight"] == 1  # five bytes still to come
    assert r.raw.read() == b"bcdef"
    until(lambda: vast.stats()["succeeded"] == 1, what="the last byte")
    assert vast.stats()["in_flight"] == 0
    assert vast.stats()["worker_seconds_by_payload"]["bd"] >= 6 * 0.25
    echo = run(vast, "bd-echo", {"body_drip": {"interval": 0.001}}, timeout=(5, 1))
    assert echo.json()["payload"]["id"] == "bd-echo"  # the usual answer, slowly


def test_nested_answers_are_deep_json(vast: Emulator) -> None:
    r = run(vast, "deep", {"nested": {}})
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.content == b"[" * 100_000 + b"]" * 100_000  # 200 KB
    with pytest.raises(RecursionError):
        json.loads(r.content)
    assert run(vast, "shallow", {"nested": {"depth": 3}}).json() == [[[]]]
    assert vast.stats()["nested_answers"] == 2 and vast.stats()["succeeded"] == 2


def test_huge_answers_announced_or_chunked(vast: Emulator) -> None:
    size = 40 * 1024 * 1024 + 3
    r = run(vast, "big", {"huge": {"bytes": size}}, stream=True)
    assert r.headers["Content-Length"] == str(size)
    assert sum(len(c) for c in r.iter_content(1024 * 1024)) == size
    r = run(vast, "big-chunked", {"huge": {"bytes": 100_001, "chunked": True}}, stream=True)
    assert "Content-Length" not in r.headers and r.headers["Transfer-Encoding"] == "chunked"
    assert r.content == b"x" * 100_001
    assert len(run(vast, "default", {"huge": True}).content) == 16 * 1024 * 1024
    s = vast.stats()
    assert (s["huge_answers"], s["succeeded"], s["in_flight"]) == (3, 3, 0)


def test_cut_answers_stop_half_way_and_close(vast: Emulator) -> None:
    sock = send_raw(assign(vast, "h"), {"id": "cut", "emulate": {"text": "0123456789",
                                                                  "cut": {}}})
    data, ended = read_all(sock)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 10" in head
    assert body == b"01234" and ended == "eof"  # FIN, five bytes short
    sock = send_raw(assign(vast, "h"), {"id": "cut-chunked", "emulate": {
        "huge": {"bytes": 1000, "chunked": True}, "cut": {"fraction": 0.25}}})
    data, ended = read_all(sock)
    sock.close()
    chunks, finished = dechunk(data.partition(b"\r\n\r\n")[2])
    assert b"".join(chunks) == b"x" * 250 and not finished and ended == "eof"
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # IncompleteRead
        run(vast, "cut-echo", {"cut": True})
    s = vast.stats()
    assert (s["cut_answers"], s["executions"], s["succeeded"], s["failed"], s["in_flight"],
            s["cancelled_by_client"]) == (3, 3, 0, 0, 0, 0)


def test_a_status_with_a_json_body_for_the_first_n_runs_then_success(vast: Emulator) -> None:
    emulate = {"status": 422, "json": {"auth_data": {"request_idx": "missing parameter"}},
               "status_times": 1}
    first = run(vast, "once", emulate)
    assert first.status_code == 422 and first.headers["Content-Type"].startswith(
        "application/json")
    assert first.json() == {"auth_data": {"request_idx": "missing parameter"}}
    second = run(vast, "once", emulate)
    assert second.status_code == 200 and second.json()["ok"] is True
    twice = {"status": 503, "status_times": 2}
    assert [run(vast, "twice", twice).status_code for _ in range(3)] == [503, 503, 200]
    always = {"status": 500, "json": [1, "x"]}
    assert [run(vast, "always", always).json() for _ in range(2)] == [[1, "x"], [1, "x"]]
    # status_times then a stream: the job that failed once streams when re-run.
    streams = {"status": 500, "status_times": 1, "stream": {"pieces": 2, "interval": 0,
                                                           "format": "raw"}}
    assert run(vast, "then-stream", streams).status_code == 500
    assert run(vast, "then-stream", streams).text == "tok0 tok1 "
    s = vast.stats()
    assert s["executions_by_payload"] == {"once": 2, "twice": 3, "always": 2, "then-stream": 2}
    assert (s["failed"], s["succeeded"]) == (6, 3)


@pytest.mark.parametrize("emulate, message", [
    ({"json": {}}, "emulate.json: needs emulate.status"),
    ({"status_times": 1}, "emulate.status_times: needs emulate.status"),
    ({"status": 400, "status_times": -1}, "emulate.status_times"),
    ({"drip": {"interval": -1}}, "emulate.drip.interval"),
    ({"drip": {"count": 1.5}}, "emulate.drip.count"),
    ({"drip": {"lines": 3}}, "emulate.drip: unknown field(s) ['lines']"),
    ({"drip": 3}, "emulate.drip: must be an object, true or false"),
    ({"body_drip": {"interval": "1"}}, "emulate.body_drip.interval"),
    ({"nested": {"depth": 0}}, "emulate.nested.depth"),
    ({"nested": {"depth": 10**9}}, "emulate.nested.depth: at most"),
    ({"huge": {"bytes": -1}}, "emulate.huge.bytes"),
    ({"huge": {"chunked": 1}}, "emulate.huge.chunked"),
    ({"cut": {"fraction": 1}}, "emulate.cut.fraction"),
    ({"drip": {}, "cut": {}}, "['drip', 'cut'] cannot be combined"),
    ({"nested": {}, "text": "x"}, "['text', 'nested'] cannot be combined"),
])
def test_bad_directives_are_422_naming_them(vast: Emulator, emulate: dict,
                                            message: str) -> None:
    r = run(vast, "bad", emulate)
    assert r.status_code == 422 and message in r.json()["payload"]["emulate"]
    assert vast.stats()["executions"] == 0


def test_false_turns_a_behaviour_off(vast: Emulator) -> None:
    r = run(vast, "off", {"drip": False, "cut": False, "nested": False})
    assert r.json()["ok"] is True
    assert vast.stats()["dripped"] == vast.stats()["cut_answers"] == 0
