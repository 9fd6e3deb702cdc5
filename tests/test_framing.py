"""Cutting a streamed answer into pieces, whatever the chunking of the bytes."""

from __future__ import annotations

import json
import random

import pytest

from dispatcher.vast.framing import LineFramer, RawFramer, SSEFramer, framer_for

OPENAI_SSE = (b'data: {"choices":[{"text":"Hel"}]}\n\n'
              b': keep-alive comment\n\n'
              b'event: message\nid: 7\ndata: {"choices":[{"text":"lo"}]}\n\n'
              b'data: line one\r\ndata: line two\r\n\r\n'
              b'data:no-space\rdata: \r\r'
              b'data: [DONE]\n\n')
OPENAI_PIECES = ['{"choices":[{"text":"Hel"}]}', '{"choices":[{"text":"lo"}]}',
                 "line one\nline two", "no-space\n", "[DONE]"]


def feed_all(framer, data: bytes, cuts: list[int]) -> list[str]:  # noqa: ANN001
    out, last = [], 0
    for c in [*cuts, len(data)]:
        out += framer.feed(data[last:c])
        last = c
    return out + framer.close()


@pytest.mark.parametrize("seed", range(25))
def test_sse_events_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(OPENAI_SSE)), rng.randint(0, 30)))
    assert feed_all(SSEFramer(), OPENAI_SSE, cuts) == OPENAI_PIECES


def test_sse_byte_by_byte_and_a_last_event_without_its_blank_line() -> None:
    data = OPENAI_SSE + b"data: tail"
    assert feed_all(SSEFramer(), data, list(range(1, len(data)))) == [*OPENAI_PIECES, "tail"]


def test_ndjson_lines_and_a_last_line_without_newline() -> None:
    rows = [{"token": t, "i": i} for i, t in enumerate(["héllo", "wörld", "日本"])]
    data = ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n\n").encode()
    for cuts in ([], list(range(1, len(data)))):
        assert [json.loads(p) for p in feed_all(LineFramer(), data, cuts)] == rows
    assert feed_all(LineFramer(), b'{"a":1}\n{"b":2}', []) == ['{"a":1}', '{"b":2}']


def test_raw_chunks_never_split_a_character() -> None:
    data = "ünïcødé ✓ 日本語".encode()
    pieces = feed_all(RawFramer(), data, list(range(1, len(data))))
    assert "".join(pieces) == data.decode() and all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize(("ctype", "kind"), [
    ("text/event-stream", SSEFramer), ("text/event-stream; charset=utf-8", SSEFramer),
    ("application/x-ndjson", LineFramer), ("application/jsonl", LineFramer),
    ("text/plain", RawFramer), ("application/json", RawFramer), (None, RawFramer)])
def test_the_framer_follows_the_content_type(ctype: str | None, kind: type) -> None:
    assert type(framer_for(ctype)) is kind
