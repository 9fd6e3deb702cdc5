"""One dispatch run's last-resort guard, with a real redis-server and a real HTTP peer: an
unexpected error of ours ends the job, saying what happened, never a silent re-run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatcher.config import Settings
from dispatcher.dev.redis_server import RedisServer
from dispatcher.dispatch import run_job
from dispatcher.runtime import Runtime
from dispatcher.store import Store, connect
from dispatcher.submission import new_job
from dispatcher.vast import VastClient
from tests.peer import Peer


class Published:
    def __init__(self) -> None:
        self.sent: list = []

    def publish(self, envelopes):  # noqa: ANN001, ANN201
        self.sent += envelopes
        return len(envelopes)


@pytest.fixture
def rt(redis_server: RedisServer) -> Iterator[tuple[Runtime, Peer]]:
    peer = Peer()
    s = Settings(redis_url=redis_server.url, vast_api_key="k", route_url=peer.url + "/route/",
                 queue="guard-q")
    peer.reply(body={"endpoint": "e", "url": peer.url, "reqnum": 1})
    runtime = Runtime(s, Store(connect(s.redis_url, 4), s.queue), VastClient.from_settings(s),
                      Published())
    yield runtime, peer
    peer.close()


def submit(rt: Runtime) -> str:
    job = new_job(rt.settings, "e", {"x": 1}, path="/x")
    rt.store.create(job.id, job.fields, 60)
    return job.id


def test_a_bug_after_the_gpu_call_started_fails_the_job_with_its_type(
        rt: tuple[Runtime, Peer], monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = rt

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.vast, "call_worker", boom)
    job_id = submit(runtime)
    assert run_job(runtime, job_id, 0) == "failed"
    job = runtime.store.get(job_id)
    assert job.status == "failed" and job.error_kind == "internal_error"
    assert job.error.startswith("internal error after its GPU call started: RuntimeError: boom")
    assert len(runtime.inflight) == 0  # its lease keeper let go of it


def test_a_bug_before_any_gpu_call_fails_the_job_too(
        rt: tuple[Runtime, Peer], monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = rt
    monkeypatch.setattr(runtime.vast, "route", lambda *a, **k: 1 / 0)
    job_id = submit(runtime)
    assert run_job(runtime, job_id, 0) == "failed"
    job = runtime.store.get(job_id)
    assert job.error_kind == "internal_error" and "before any GPU call" in job.error
    assert "ZeroDivisionError" in job.error
