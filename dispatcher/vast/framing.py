"""Cutting a streamed worker answer into the pieces a reader sees, as it arrives.

One piece per Server-Sent Event for ``text/event-stream`` (its ``data`` lines, joined
by newlines, as the SSE spec says; ``[DONE]`` included: it is the model's), one per
line for ndjson / JSON lines, and raw chunks (decoded as UTF-8, never splitting a
character) for anything else. Vast's PyWorker passes the model's stream through
unchanged, so this is the model server's framing.
"""

from __future__ import annotations

import codecs
from typing import Protocol

LINE_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl",
              "application/json-lines", "application/x-jsonlines", "application/jsonlines")


class Framer(Protocol):
    def feed(self, data: bytes) -> list[str]: ...

    def close(self) -> list[str]: ...


class _Text:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def _text(self, data: bytes, final: bool = False) -> str:
        return self._decoder.decode(data, final)


class RawFramer(_Text):
    def feed(self, data: bytes) -> list[str]:
        text = self._text(data)
        return [text] if text else []

    def close(self) -> list[str]:
        text = self._text(b"", final=True)
        return [text] if text else []


class LineFramer(_Text):
    def __init__(self) -> None:
        super().__init__()
        self._rest = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._rest + self._text(data)
        *lines, self._rest = text.split("\n")
        return [line.rstrip("\r") for line in lines if line.strip()]

    def close(self) -> list[str]:
        tail = (self._rest + self._text(b"", final=True)).strip()
        self._rest = ""
        return [tail] if tail else []


class SSEFramer(_Text):
    """The SSE wire format: events end at a blank line; ``data:`` lines accumulate;
    comments (``:``) and other fields (event, id, retry) are not pieces."""

    def __init__(self) -> None:
        super().__init__()
        self._rest = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        text = self._rest + self._text(data)
        # Lines end with CRLF, LF or CR; a CR at the very end may be half of a CRLF.
        text = text.replace("\r\n", "\n")
        keep_cr = text.endswith("\r")
        if keep_cr:
            text = text[:-1]
        lines = text.replace("\r", "\n").split("\n")
        self._rest = lines.pop() + ("\r" if keep_cr else "")
        out: list[str] = []
        for line in lines:
            self._line(line, out)
        return out

    def _line(self, line: str, out: list[str]) -> None:
        if not line:
            if self._data:
                out.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        out: list[str] = []
        tail = (self._rest + self._text(b"", final=True)).rstrip("\r")
        self._rest = ""
        if tail:
            self._line(tail, out)
        self._line("", out)  # a last event without its blank line still counts
        return out


def framer_for(content_type: str | None) -> Framer:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "text/event-stream":
        return SSEFramer()
    if ctype in LINE_TYPES:
        return LineFramer()
    return RawFramer()
