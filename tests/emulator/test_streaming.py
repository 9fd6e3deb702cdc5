"""Streaming workers (issue 13): pieces written and flushed one by one, in each framing,
from the endpoint's settings or one payload's directive, and a connection dropped mid-way."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
import requests

from dispatcher.emulator import ConfigError, Emulator, EmulatorConfig, expected_stream
from tests.poll import until

from .conftest import (
    FAST,
    assign,
    call,
    dechunk,
    make_config,
    read_all,
    send_raw,
)

pytestmark = pytest.mark.timeout(60)


def parse(fmt: str, chunks: list[bytes]) -> list[str]:
    """Pieces as a reader makes them out, parsed here independently of the emulator."""
    text = b"".join(chunks).decode()
    if fmt == "sse":
        events = [e for e in text.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events), events
        return [e.removeprefix("data: ") for e in events]
    if fmt == "ndjson":
        assert text.endswith("\n")
        return text.splitlines()
    return [c.decode() for c in chunks]


@pytest.mark.parametrize("fmt", ["sse", "ndjson", "raw"])
def test_pieces_arrive_one_by_one_in_order_and_complete(fmt: str) -> None:
    stream = {"pieces": 5, "interval": 0.3, "format": fmt}
    cfg = make_config(endpoints={"s": {"workers": 1, "latency": FAST, "stream": stream}})
    with Emulator(cfg) as vast:
        payload = {"id": f"job-{fmt}", "prompt": "hi"}
        want = expected_stream(payload, cfg.endpoints["s"].stream)
        r = call(assign(vast, "s"), payload, stream=True)
        assert r.status_code == 200
        assert r.headers["Content-Type"].split(";")[0] == want.content_type
        assert r.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.headers
        chunks = r.iter_content(chunk_size=None)  # one HTTP chunk at a time, as it arrives
        first = next(chunks)
        # The first piece is here while the worker is still writing the others.
        stats = vast.stats()
        assert stats["stream_pieces_by_payload"][want.id] < 5 and stats["in_flight"] == 1
        got = [first, *chunks]
        assert got == want.chunks and b"".join(got) == want.body
        pieces = parse(fmt, got)
        assert pieces == want.pieces
        if fmt == "sse":
            assert pieces[-1] == "[DONE]"
            events = [json.loads(p) for p in pieces[:-1]]
            assert [e["choices"][0]["text"] for e in events] == [f"tok{i} " for i in range(5)]
            assert [e["choices"][0]["finish_reason"] for e in events][-2:] == [None, "stop"]
            assert all(e["id"] == want.id for e in events)
        elif fmt == "ndjson":
            assert [json.loads(p) for p in pieces] == [
                {"i": i, "id": want.id, "text": f"tok{i} "} for i in range(5)]
        assert want.text == "tok0 tok1 tok2 tok3 tok4 "
        s = vast.stats()
        assert (s["streams"], s["streams_completed"], s["streams_dropped"], s["stream_pieces"],
                s["succeeded"], s["in_flight"]) == (1, 1, 0, 5, 1, 0)
        assert s["worker_seconds_by_payload"][want.id] >= 4 * 0.3  # busy until the last piece


def test_a_directive_streams_one_job_and_can_opt_out_of_the_endpoints_stream() -> None:
    cfg = make_config(endpoints={
        "plain": {"workers": 1, "latency": FAST},
        "streams": {"workers": 1, "latency": FAST, "stream": {"pieces": 2, "interval": 0}}})
    with Emulator(cfg) as vast:
        one = {"id": "one", "emulate": {"stream": {"pieces": 3, "interval": 0.01,
                                                   "format": "ndjson"}}}
        r = call(assign(vast, "plain"), one)
        assert r.headers["Content-Type"] == "application/x-ndjson"
        assert r.content == expected_stream(one).body
        assert r.text.count("\n") == 3
        assert call(assign(vast, "plain"), {"id": "other"}).json()["ok"] is True
        defaults = {"id": "defaults", "emulate": {"stream": True}}
        assert call(assign(vast, "plain"), defaults).content == expected_stream(defaults).body
        assert len(expected_stream(defaults).pieces) == 8 + 1  # 8 pieces and [DONE]
        # On a streaming endpoint: a job's fields override the endpoint's, or turn it off.
        assert call(assign(vast, "streams"), {"id": "e"}).content == expected_stream(
            "e", {"pieces": 2}).body
        raw = {"id": "r", "emulate": {"stream": {"format": "raw"}}}
        assert call(assign(vast, "streams"), raw).text == "tok0 tok1 "
        off = call(assign(vast, "streams"), {"id": "off", "emulate": {"stream": False}})
        assert off.json()["ok"] is True
        text = call(assign(vast, "streams"), {"id": "t", "emulate": {"text": "whole"}})
        assert text.text == "whole"  # a body directive answers instead of the stream
        assert vast.stats()["streams"] == 4


def test_drop_after_resets_the_connection_after_k_pieces_without_a_final_chunk() -> None:
    stream = {"pieces": 6, "interval": 0.05, "format": "sse", "drop_after": 3}
    cfg = make_config(endpoints={"s": {"workers": 1, "latency": FAST, "stream": stream}})
    with Emulator(cfg) as vast:
        want = expected_stream("cut-short", cfg.endpoints["s"].stream)
        sock = send_raw(assign(vast, "s"), {"id": "cut-short"})
        until(lambda: vast.stats()["streams_dropped"] == 1, what="the drop")
        data, ended = read_all(sock)  # read only now: what was sent is still delivered
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and ended == "reset"
        chunks, finished = dechunk(body)
        assert not finished and chunks == want.chunks[:3]
        assert parse("sse", chunks) == want.delivered == want.pieces[:3]
        # K >= pieces: every piece, then the reset instead of [DONE] and the final chunk.
        everything = {"id": "all-but-end", "emulate": {"stream": {"drop_after": 6}}}
        sock = send_raw(assign(vast, "s"), everything)
        data, ended = read_all(sock)
        sock.close()
        chunks, finished = dechunk(data.partition(b"\r\n\r\n")[2])
        want = expected_stream(everything, cfg.endpoints["s"].stream)
        assert ended == "reset" and not finished and parse("sse", chunks) == want.delivered
        assert len(want.delivered) == 6 and want.pieces[-1] == "[DONE]"
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            call(assign(vast, "s"), {"id": "via-requests"})
        s = vast.stats()
        assert (s["streams"], s["streams_dropped"], s["streams_completed"], s["succeeded"],
                s["cancelled_by_client"], s["in_flight"]) == (3, 3, 0, 0, 0, 0)
        assert s["stream_pieces_by_payload"] == {"cut-short": 3, "all-but-end": 6,
                                                 "via-requests": 3}


def test_a_stream_holds_its_workers_slot_until_its_last_piece() -> None:
    stream = {"pieces": 4, "interval": 0.1, "format": "ndjson"}
    cfg = make_config(endpoints={"s": {"workers": 1, "concurrency": 1, "queue_depth": 2,
                                       "latency": FAST, "stream": stream}})
    with Emulator(cfg) as vast:
        answers = [assign(vast, "s"), assign(vast, "s")]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(lambda a: call(a, {"id": str(a["reqnum"])}).text, answers))
        assert all(b.count("\n") == 4 for b in bodies)
        s = vast.stats()
        assert s["peak_in_flight"] == 1 and s["streams_completed"] == 2


def test_https_workers_stream_too() -> None:
    cfg = make_config(endpoints={"s": {"workers": 1, "latency": FAST, "tls": True,
                                       "stream": {"pieces": 3, "interval": 0.05}}})
    with Emulator(cfg) as vast:
        a = assign(vast, "s")
        r = requests.post(a["url"] + "/x", json={"auth_data": a, "payload": {"id": "tls"}},
                          verify=vast.ca_path, stream=True, timeout=10)
        got = list(r.iter_content(chunk_size=None))
        assert got == expected_stream("tls", cfg.endpoints["s"].stream).chunks


@pytest.mark.parametrize("stream, field", [
    ({"pieces": -1}, "endpoints.s.stream.pieces"),
    ({"interval": "1"}, "endpoints.s.stream.interval"),
    ({"format": "json"}, "endpoints.s.stream.format"),
    ({"drop_after": 1.5}, "endpoints.s.stream.drop_after"),
    ({"piece": 1}, "endpoints.s.stream: unknown field(s) ['piece']"),
    (3, "endpoints.s.stream: must be an object"),
])
def test_bad_stream_settings_name_the_field(stream: object, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        EmulatorConfig.from_dict({"endpoints": {"s": {"stream": stream}}})
    assert field in str(err.value)


def test_stream_settings_defaults_and_bad_directives(vast: Emulator) -> None:
    cfg = EmulatorConfig.from_dict({"endpoints": {"s": {"stream": True}, "n": {}}})
    assert cfg.endpoints["s"].stream == {"pieces": 8, "interval": 0.05, "format": "sse",
                                         "drop_after": None}
    assert cfg.endpoints["n"].stream is None
    with pytest.raises(ConfigError, match="stream"):
        EmulatorConfig.from_dict({"endpoints": {"p": {"workers_from": "pyworker",
                                                      "stream": {"pieces": 2}}}})
    for bad, field in [({"stream": {"format": "xml"}}, "emulate.stream.format"),
                       ({"stream": "yes"}, "emulate.stream"),
                       ({"stream": {"pieces": 2}, "drip": {}}, "stream cannot be combined"),
                       ({"stream": True, "huge": True}, "cannot be combined")]:
        r = call(assign(vast, "llm"), {"id": "bad", "emulate": bad})
        assert r.status_code == 422 and field in r.json()["payload"]["emulate"], bad
    assert vast.stats()["executions"] == 0


def test_empty_streams_and_a_drop_before_the_first_piece(vast: Emulator) -> None:
    empty = {"id": "empty", "emulate": {"stream": {"pieces": 0}}}
    r = call(assign(vast, "llm"), empty)
    assert r.content == b"data: [DONE]\n\n" == expected_stream(empty).body
    sock = send_raw(assign(vast, "llm"), {"id": "at-once", "emulate": {
        "stream": {"format": "ndjson", "drop_after": 0}}})
    data, ended = read_all(sock)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/x-ndjson" in head and body == b"" and ended == "reset"
    assert expected_stream({"emulate": {"stream": {"drop_after": 0}}}).delivered == []
    s = vast.stats()
    assert (s["streams_completed"], s["streams_dropped"], s["stream_pieces"]) == (1, 1, 0)
