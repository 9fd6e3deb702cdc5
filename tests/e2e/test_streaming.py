"""Streaming end to end (issue 13): the emulator's workers stream their answers; a real
worker process appends each piece to the job's Redis stream as it arrives; readers follow
it from the start, in this process, in another one, or as Server-Sent Events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import sseclient

from dispatcher.client import Client
from dispatcher.emulator import Emulator, expected_stream
from dispatcher.errors import JobFailed
from dispatcher.store.keys import STREAM

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(120)


def streaming(n: int = 10, interval: float = 0.05, fmt: str = "sse", **extra: Any) -> dict:
    return {"id": uuid.uuid4().hex, "prompt": "stream me",
            "emulate": {"stream": {"pieces": n, "interval": interval, "format": fmt, **extra}}}


def submit(client: Client, ep: str, payload: dict, **options: Any) -> str:
    return client.submit(ep, payload, path="/v1/completions", stream=True, max_wait=30,
                         timeout=30, **options)


@pytest.mark.parametrize("fmt", ["sse", "ndjson", "raw"])
def test_every_piece_in_order_and_the_whole_answer_as_the_result(
        client: Client, vast: Emulator, fmt: str) -> None:
    ep = add_endpoint(vast)
    payload = streaming(12, fmt=fmt)
    want = expected_stream(payload)
    job_id = submit(client, ep, payload)
    pieces = list(client.stream(job_id, timeout=60))
    if fmt == "raw":  # raw chunks: as the bytes arrived, which TCP may merge or split
        assert "".join(pieces) == want.body.decode()
    else:
        assert pieces == want.pieces
    job = client.get_job(job_id)
    assert job.status == "succeeded" and job.stream
    assert job.result == want.body.decode()  # the whole answer, as for any job
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1


def test_the_first_piece_is_readable_long_before_the_last_is_written(
        client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    payload = streaming(10, interval=0.6)  # the last piece comes ~5.4 s after the first
    job_id = submit(client, ep, payload)
    stream = client.stream(job_id, timeout=60)
    first = next(stream)
    seen_first = time.monotonic()
    assert client.get_job(job_id).status == "running"  # not buffered until the end
    rest = list(stream)
    assert time.monotonic() - seen_first > 2.0  # the others really came later
    assert [first, *rest] == expected_stream(payload).pieces


def test_a_late_reader_and_a_reader_in_another_process_get_everything(
        client: Client, vast: Emulator, e2e_env: dict[str, str]) -> None:
    ep = add_endpoint(vast)
    payload = streaming(8, interval=0.1, fmt="ndjson")
    want = expected_stream(payload).pieces
    job_id = submit(client, ep, payload)
    follower = subprocess.Popen([sys.executable, "-m", "dispatcher", "result", job_id,
                                 "--follow", "--timeout", "60"],
                                env={**os.environ, **e2e_env}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    out, err = follower.communicate(timeout=90)
    assert follower.returncode == 0, err
    assert out.splitlines() == want
    assert client.wait(job_id, timeout=30).status == "succeeded"
    assert list(client.stream(job_id)) == want  # after the end: from the start
    raw = redis.Redis.from_url(e2e_env["REDIS_URL"], decode_responses=True)
    entries = raw.xrange(STREAM(job_id))
    assert [e[1] for e in entries] == [{"data": p} for p in want] + [{"end": "succeeded"}]
    assert 0 < raw.ttl(STREAM(job_id)) <= client.settings.result_ttl  # expires with the job


def test_a_stream_that_breaks_midway_fails_keeps_its_pieces_and_is_not_run_again(
        client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    payload = streaming(10, interval=0.05, drop_after=4)
    job_id = submit(client, ep, payload)
    got: list[str] = []
    with pytest.raises(JobFailed) as e:
        for piece in client.stream(job_id, timeout=60):
            got.append(piece)
    assert got == expected_stream(payload).delivered
    job = e.value.job
    assert job.status == "failed" and job.error_kind == "worker_stream_broken", job
    assert "pieces received are kept" in job.error and job.reroutes == 0
    assert vast.stats()["executions_by_payload"][payload["id"]] == 1  # no re-run


def test_cancelling_a_streaming_job_closes_the_gpu_call(client: Client, vast: Emulator) -> None:
    """The canceller is this process; the call is held by the worker process: it sees the
    lease gone within a second and closes the connection, and the emulator's worker
    (as Vast's PyWorker does on a disconnect) stops the work."""
    ep = add_endpoint(vast)
    payload = streaming(100, interval=0.1)  # ~10 s of streaming
    job_id = submit(client, ep, payload)
    stream = client.stream(job_id, timeout=60)
    assert next(stream)  # it is on the GPU and streaming
    assert client.cancel(job_id)
    cancelled_at = time.monotonic()
    with pytest.raises(JobFailed) as e:
        list(stream)
    assert e.value.job.status == "cancelled"
    assert "GPU call was interrupted" in e.value.job.error

    def interrupted() -> int:
        return vast.stats()["cancelled_by_payload"].get(payload["id"], 0)

    while not interrupted() and time.monotonic() - cancelled_at < 5:
        time.sleep(0.05)
    assert interrupted() == 1
    assert time.monotonic() - cancelled_at < 1.0 + 2.0  # renewals each second; a loaded box
    assert vast.stats()["stream_pieces_by_payload"][payload["id"]] < 100


def test_the_sse_helper_parses_as_server_sent_events(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    payload = streaming(6)
    job_id = submit(client, ep, payload)
    events = list(sseclient.SSEClient(client.sse(job_id, timeout=60)).events())
    assert [e.data for e in events[:-1]] == expected_stream(payload).pieces
    assert events[-1].event == "end" and json.loads(events[-1].data) == {"status": "succeeded"}
    failed = streaming(6, drop_after=2)
    events = list(sseclient.SSEClient(client.sse(submit(client, ep, failed), 60)).events())
    end = json.loads(events[-1].data)
    assert events[-1].event == "end" and end["status"] == "failed"
    assert end["error_kind"] == "worker_stream_broken"
    assert [e.data for e in events[:-1]] == expected_stream(failed).delivered


def test_a_job_without_stream_yields_its_result_once(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    job_id = client.submit(ep, {"id": uuid.uuid4().hex, "emulate": {"text": "whole"}},
                           path="/x")
    assert list(client.stream(job_id, timeout=60)) == ["whole"]


def test_many_readers_of_one_stream_see_the_same_pieces(client: Client, vast: Emulator) -> None:
    ep = add_endpoint(vast)
    payload = streaming(20, interval=0.02)
    job_id = submit(client, ep, payload)
    results: list[list[str]] = []

    def read() -> None:
        results.append(list(client.stream(job_id, timeout=60)))

    readers = [threading.Thread(target=read) for _ in range(5)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(60)
    assert results == [expected_stream(payload).pieces] * 5
