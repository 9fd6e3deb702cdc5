"""Following a streaming job: its Redis stream read from the start, as the sync and asyncio
clients and the gateway all do, and the same pieces as Server-Sent Events.

A job submitted with ``stream=True`` has ``dispatcher:stream:<id>``: entries ``{"data":
<piece>}`` as the worker's answer arrives, then one ``{"end": <status>}`` written by the
job's terminal write. A reader starts at the first entry (a late reader misses nothing)
and stops at the end entry. Pure: no Redis here, only what an entry means.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dispatcher.model import Job, Status

FIRST = "0-0"  # read from the first entry


@dataclass(frozen=True)
class Step:
    """What a batch of entries says: the pieces in order, the id to read after, and the
    end status if the end entry was among them (pieces after it do not exist)."""

    pieces: list[str]
    last: str
    end: str | None


def step(entries: Iterable[tuple[str, dict[str, str]]], last: str) -> Step:
    pieces: list[str] = []
    for entry_id, fields in entries:
        last = entry_id
        if "end" in fields:
            return Step(pieces, last, fields["end"])
        pieces.append(fields.get("data", ""))
    return Step(pieces, last, None)


class Follow:
    """The reading loop of ``stream()`` without its I/O, so the sync and asyncio readers
    are the same loop: read after ``last`` for ``block()`` seconds, ``feed`` the entries,
    until ``end`` is set (the job's status) or ``expired()``."""

    def __init__(self, timeout: float | None, recheck: float) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.recheck = recheck
        self.last = FIRST
        self.end: str | None = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def block(self) -> float:
        if self.deadline is None:
            return self.recheck
        return max(0.001, min(self.recheck, self.deadline - time.monotonic()))

    def feed(self, entries: Iterable[tuple[str, dict[str, str]]]) -> list[str]:
        st = step(entries, self.last)
        self.last, self.end = st.last, st.end
        return st.pieces


def result_text(job: Job) -> str:
    """A job that did not stream, as one piece: its result as text."""
    if isinstance(job.result, str):
        return job.result
    return json.dumps(job.result, ensure_ascii=False)


def sse_data(piece: str) -> bytes:
    """One piece as one SSE event (a piece with newlines is several data lines)."""
    return ("".join(f"data: {line}\n" for line in piece.split("\n")) + "\n").encode()


def sse_end(job: Job) -> bytes:
    """The last event: ``event: end`` with the job's status (and why, if it failed)."""
    end: dict[str, object] = {"status": job.status}
    if job.status != Status.SUCCEEDED:
        end.update(error_kind=job.error_kind, error=job.error)
    return f"event: end\ndata: {json.dumps(end, ensure_ascii=False)}\n\n".encode()
