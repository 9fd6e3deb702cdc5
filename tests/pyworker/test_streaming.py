"""Vast's real PyWorker (``vastai`` 1.9.1) passes a streamed model answer through unchanged
and as it comes (issue 13): plain HTTP, emulator -> PyWorker -> a model that writes an
OpenAI-style SSE event every 50 ms."""

from __future__ import annotations

import json
import time

import pytest
import requests

from dispatcher.emulator import Emulator, EmulatorConfig

from .conftest import KEY, Launcher, assignment, pyworker_state, wait_for

pytestmark = [pytest.mark.pyworker, pytest.mark.timeout(120)]
PIECES = 40  # 2 s of pieces: the first is read long before the model writes the last


def test_a_real_pyworker_streams_the_models_events_through_as_they_come(
        launcher: Launcher) -> None:
    cfg = EmulatorConfig.from_dict({"api_key": KEY, "endpoints": {
        "llm": {"workers_from": "pyworker", "concurrency": 4}}})
    with Emulator(cfg) as vast:
        model = launcher.model()
        pw = launcher.pyworker(vast, model)
        wait_for(lambda: pyworker_state(vast, "llm", pw.id) == "ready", 60,
                 "the PyWorker to be ready", [pw.proc, model.proc])
        a = assignment(vast, "llm")
        r = requests.post(a["url"] + "/generate_stream", stream=True, timeout=30, json={
            "auth_data": a, "payload": {"id": "s1", "pieces": PIECES}, "session_id": None})
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers.get("Transfer-Encoding") == "chunked"
        received: list[tuple[float, bytes]] = []
        for chunk in r.iter_content(chunk_size=None):
            received.append((time.time(), chunk))
        body = b"".join(chunk for _, chunk in received)
        events = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]
        assert events[-1] == b"[DONE]"
        pieces = [json.loads(e) for e in events[:-1]]
        assert [p["i"] for p in pieces] == list(range(PIECES))
        assert [p["choices"][0]["text"] for p in pieces] == [f"tok{i} " for i in range(PIECES)]
        # Unchanged: byte for byte what the model wrote (its json.dumps of each event).
        assert body == b"".join(b"data: " + json.dumps(p).encode() + b"\n\n"
                                for p in pieces) + b"data: [DONE]\n\n"
        # As they come: the first event was here before the model wrote the last one, and
        # the pieces arrived in many reads over the stream's time, not in one at the end.
        first_seen = next(t for t, chunk in received if b"\n\n" in chunk)
        assert first_seen < pieces[-1]["t"]
        assert len(received) > PIECES // 4
