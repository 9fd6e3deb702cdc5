"""Streamed answers: what an emulated worker writes, piece by piece, and what a test expects.

Every piece is a pure function of the payload's id and its index, so a test can check the
order and the completeness of what reached it without asking the emulator: piece ``i`` of
payload ``p`` is ``{"i": i, "id": p, "text": "tok<i> "}`` (ndjson), the same inside an
OpenAI-style completion chunk (sse), or just its text (raw). ``expected_stream`` gives a
test the pieces, the wire chunks and the whole answer for a payload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.emulator.config import STREAM_DEFAULTS, ConfigError, check_stream_fields
from dispatcher.emulator.fleet import payload_id

CONTENT_TYPES = {"sse": "text/event-stream", "ndjson": "application/x-ndjson",
                 "raw": "text/plain"}
SSE_DONE = b"data: [DONE]\n\n"


def token(i: int) -> str:
    return f"tok{i} "


def piece_data(pid: str, i: int, pieces: int, fmt: str) -> str:
    """Piece ``i`` as a reader sees it: an SSE event's data, an ndjson line, a raw chunk."""
    if fmt == "raw":
        return token(i)
    if fmt == "ndjson":
        return json.dumps({"i": i, "id": pid, "text": token(i)}, separators=(",", ":"))
    last = i == pieces - 1
    return json.dumps({"id": pid, "object": "text_completion", "i": i, "choices": [
        {"index": 0, "text": token(i), "finish_reason": "stop" if last else None}]},
        separators=(",", ":"))


def piece_bytes(pid: str, i: int, pieces: int, fmt: str) -> bytes:
    """Piece ``i`` as written on the wire (one write, flushed at once)."""
    data = piece_data(pid, i, pieces, fmt)
    if fmt == "sse":
        return f"data: {data}\n\n".encode()
    if fmt == "ndjson":
        return (data + "\n").encode()
    return data.encode()


def resolve(endpoint_stream: Mapping[str, Any] | None,
            directive: Any) -> dict[str, Any] | None:
    """The settings one execution streams with: the ``emulate.stream`` directive's fields
    over the endpoint's ``stream`` over the defaults; None when it does not stream."""
    if directive is False:
        return None
    if directive is None or directive is True:
        if directive is None and endpoint_stream is None:
            return None
        return {**STREAM_DEFAULTS, **(endpoint_stream or {})}
    return {**STREAM_DEFAULTS, **(endpoint_stream or {}), **directive}


@dataclass(frozen=True)
class ExpectedStream:
    """What an emulated worker streams for one payload, to compare with what arrived."""

    id: str  # the payload's id
    format: str
    content_type: str
    pieces: list[str]  # as a reader sees them; with sse the last is "[DONE]"
    chunks: list[bytes]  # as written, one write each
    body: bytes  # the whole answer, as a client that waits for the end reads it
    text: str  # the tokens joined: "tok0 tok1 ..."
    drop_after: int | None  # the connection is reset after this many pieces

    @property
    def delivered(self) -> list[str]:
        """The pieces sent before the connection is dropped (all of them without a drop)."""
        if self.drop_after is None:
            return self.pieces
        n = len(self.pieces) - (1 if self.format == "sse" else 0)
        return self.pieces[: min(self.drop_after, n)]


def expected_stream(payload: Any, stream: Mapping[str, Any] | None = None) -> ExpectedStream:
    """What streaming ``payload`` answers: its ``emulate.stream`` directive (if any) over
    ``stream`` (the endpoint's settings, if it streams) over the defaults.

    ``payload`` is the payload itself or its id (a string)."""
    if isinstance(payload, str):
        pid, directive = payload, True
    else:
        pid = payload_id(payload)
        emulate = payload.get("emulate") if isinstance(payload, dict) else None
        directive = emulate.get("stream", True) if isinstance(emulate, dict) else True
    if isinstance(directive, Mapping):
        directive = check_stream_fields(directive, "emulate.stream")
    elif not isinstance(directive, bool):
        raise ConfigError(f"emulate.stream: must be an object, true or false, got {directive!r}")
    base = check_stream_fields(stream, "stream") if stream is not None else None
    settings = resolve(base, directive)
    if settings is None:
        raise ValueError("this payload does not stream (emulate.stream is false)")
    n, fmt = settings["pieces"], settings["format"]
    pieces = [piece_data(pid, i, n, fmt) for i in range(n)]
    chunks = [piece_bytes(pid, i, n, fmt) for i in range(n)]
    if fmt == "sse":
        pieces.append("[DONE]")
        chunks.append(SSE_DONE)
    return ExpectedStream(id=pid, format=fmt, content_type=CONTENT_TYPES[fmt], pieces=pieces,
                          chunks=chunks, body=b"".join(chunks),
                          text="".join(token(i) for i in range(n)),
                          drop_after=settings["drop_after"])
