"""Unit tests of the operators' scripts (issue 15) on fakeredis: the job index kept by
every transition (lib/index.lua), its expiry and bound, retry.lua, cancel_running.lua.

Tests of expiry run on ``clock`` (tests/test_fleet_store.py): Redis TIME and fakeredis'
key expiry move only when the test moves them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import fakeredis
import pytest

from dispatcher.model import Status
from dispatcher.store import Store, keys, scripts
from dispatcher.store.keys import JOB_INDEX

from . import test_fleet_store
from .test_fleet_store import Clock

clock = test_fleet_store.clock  # the fixture

TTL = 100


def make_store(queue: str = "q") -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), queue, rng=random.Random(1))


@pytest.fixture
def store() -> Store:
    return make_store()


def new_job(store: Store, job_id: str, endpoint: str = "e", **extra: object) -> None:
    fields = {"id": job_id, "status": Status.QUEUED, "endpoint": endpoint, "cost": 1.0,
              "path": "/x", "payload": '{"n": 1}', "max_wait": 600.0, "timeout": 5.0,
              "priority": 0, "queue": store.queue, **extra}
    assert store.create(job_id, fields, 60)


def run(store: Store, job_id: str, token: str = "t") -> None:
    """Claim it and put it on a GPU."""
    seq = int(store.redis.hget(keys.JOB(job_id), "seq"))
    assert store.claim(job_id, seq, 30, token).outcome == "ok"
    assert store.mark_running(job_id, token, 30, {"worker_url": "http://w"}) is not None


def fail(store: Store, job_id: str, kind: str = "worker_failed", ttl: int = TTL) -> None:
    run(store, job_id)
    done = store.finish(job_id, Status.FAILED, ttl, {"error": f"boom ({kind})",
                                                     "error_kind": kind}, token="t")
    assert done.outcome == "ok"


def index(store: Store, status: str, endpoint: str = "e") -> list[str]:
    return store.redis.zrange(JOB_INDEX(endpoint, status), 0, -1)


def ids(jobs: list) -> list[str]:
    return [j.id for j in jobs]


def test_every_status_change_moves_the_job_in_the_index(store: Store) -> None:
    new_job(store, "a")
    assert index(store, "queued") == ["a"]
    assert store.claim("a", 0, 30, "t").outcome == "ok"
    assert store.schedule("a", "t", 5.0, {"wait_reason": "no worker"}) == "ok"
    assert index(store, "queued") == [] and index(store, "waiting") == ["a"]
    assert store.claim("a", 1, 30, "u").outcome == "ok"
    store.mark_running("a", "u", 30, {})
    assert index(store, "waiting") == [] and index(store, "running") == ["a"]
    store.finish("a", Status.SUCCEEDED, TTL, {"result": "x"}, token="u")
    assert index(store, "running") == [] and index(store, "succeeded") == ["a"]
    new_job(store, "b")
    store.finish("b", Status.CANCELLED, TTL, {"error": "no"})  # a cancel while queued
    assert index(store, "queued") == [] and index(store, "cancelled") == ["b"]


def test_listing_is_newest_first_and_filters(clock: Clock) -> None:
    store = make_store()
    for n, kind in enumerate(["worker_failed", "worker_timeout", "worker_failed"]):
        new_job(store, f"f{n}")
        fail(store, f"f{n}", kind)
        clock.sleep(1)
    new_job(store, "other", endpoint="e2")
    fail(store, "other")
    new_job(store, "q")  # queued, newest
    failed = store.list_jobs(["e"], ["failed"])
    assert ids(failed) == ["f2", "f1", "f0"]
    assert failed[0].status == "failed" and failed[0].error_kind == "worker_failed"
    assert failed[0].created_at and failed[0].finished_at and failed[0].result is None
    assert ids(store.list_jobs(["e"], ["failed"], limit=2)) == ["f2", "f1"]
    assert ids(store.list_jobs(["e"], ["failed"], kinds={"worker_failed"})) == ["f2", "f0"]
    assert ids(store.list_jobs(["e"], ["failed"], since=clock.t - 1.5)) == ["f2"]
    # Every status of an endpoint, merged: the latest change first.
    assert ids(store.list_jobs(["e"], list(map(str, Status))[:-1])) == ["q", "f2", "f1", "f0"]
    assert ids(store.list_jobs(["e", "e2"], ["failed"], limit=2)) == ["other", "f2"]


def test_listing_pages_through_more_jobs_than_a_page(store: Store) -> None:
    for n in range(25):
        new_job(store, f"j{n:02}")
        fail(store, f"j{n:02}", "worker_timeout" if n % 5 == 0 else "worker_failed")
    every = store.list_jobs(["e"], ["failed"], limit=None, page=4)
    assert sorted(ids(every)) == sorted(f"j{n:02}" for n in range(25))
    rare = store.list_jobs(["e"], ["failed"], limit=None, kinds={"worker_timeout"}, page=3)
    assert sorted(ids(rare)) == ["j00", "j05", "j10", "j15", "j20"]


def test_the_index_expires_with_the_jobs(clock: Clock) -> None:
    store = make_store()
    new_job(store, "old")
    fail(store, "old")
    clock.sleep(TTL / 2)
    new_job(store, "new")
    fail(store, "new")
    clock.sleep(TTL / 2 + 1)  # "old" is past its TTL, "new" is not
    r = store.redis
    assert not r.exists(keys.JOB("old")) and r.exists(keys.JOB("new"))
    assert ids(store.list_jobs(["e"], ["failed"])) == ["new"]  # a gone job is never listed
    new_job(store, "third")
    fail(store, "third")  # each end trims the entries past the TTL
    assert index(store, "failed") == ["new", "third"]
    clock.sleep(TTL + 1)
    assert not r.exists(JOB_INDEX("e", "failed"))  # the set went with its newest job
    assert store.list_jobs(["e"], ["failed"]) == []


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """JOB_INDEX_MAX at 5: the scripts are built again with it."""
    monkeypatch.setattr(keys, "JOB_INDEX_MAX", 5)
    scripts.source.cache_clear()
    yield 5
    scripts.source.cache_clear()


def test_the_index_keeps_at_most_the_bound_per_endpoint_and_status(small_bound: int) -> None:
    store = make_store()
    for n in range(8):
        new_job(store, f"j{n}")
        fail(store, f"j{n}")
    assert index(store, "failed") == [f"j{n}" for n in range(3, 8)]  # the newest 5


def test_retry_queues_an_ended_job_again_once(store: Store) -> None:
    new_job(store, "a", stream=1)
    store.redis.xadd(keys.STREAM("a"), {"data": "old piece"})
    fail(store, "a")
    before = store.redis.hgetall(keys.JOB("a"))
    assert store.redis.ttl(keys.JOB("a")) > 0 and store.redis.exists(keys.DONE("a"))
    r = store.retry("a", grace=60)
    assert r.outcome == "ok" and r.envelope is not None
    assert (r.envelope.id, r.envelope.seq, r.envelope.endpoint) == ("a", 1, "e")
    h = store.redis.hgetall(keys.JOB("a"))
    assert h["status"] == "queued" and h["seq"] == "1" and h["retries"] == "1"
    assert h["payload"] == '{"n": 1}' and h["path"] == "/x" and h["timeout"] == before["timeout"]
    assert h["last_error"] == "boom (worker_failed)" and h["last_error_kind"] == "worker_failed"
    for gone in ("error", "error_kind", "finished_at", "assigned_at", "worker_url", "attempts",
                 "lease_token", "reroutes"):
        assert gone not in h, gone
    assert float(h["created_at"]) >= float(before["created_at"])  # max_wait from now
    assert h["first_created_at"] == before["created_at"]
    r_ = store.redis
    assert r_.ttl(keys.JOB("a")) == -1  # kept until it ends again
    assert not r_.exists(keys.DONE("a")) and not r_.exists(keys.STREAM("a"))
    assert index(store, "failed") == [] and index(store, "queued") == ["a"]
    assert store.redis.zrange(keys.PENDING_INDEX("q", "e"), 0, -1) == ["a"]
    assert store.counts("e")["queued"] == 1 and store.counts("e")["failed"] == 1
    assert store.redis.zscore(store.waiting, "a") is not None  # the safety net
    # Idempotent: a second retry finds it queued; an old message of it is stale.
    assert store.retry("a", grace=60).outcome == "queued"
    assert store.claim("a", 0, 30, "x").outcome == "stale"
    assert store.claim("a", 1, 30, "x").outcome == "ok"
    job = store.get("a")
    assert job.retries == 1 and job.last_error_kind == "worker_failed" and job.attempts == 1


def test_retry_refuses_what_it_cannot_rerun(store: Store) -> None:
    assert store.retry("nope", 60).outcome == "unknown"
    new_job(store, "live")
    assert store.retry("live", 60).outcome == "queued"
    new_job(store, "ok")
    run(store, "ok")
    store.finish("ok", Status.SUCCEEDED, TTL, {"result": "x"}, token="t")
    assert store.retry("ok", 60).outcome == "succeeded"  # not unless forced
    # A success's payload is dropped at its end: a forced retry says so.
    assert store.retry("ok", 60, force=True).outcome == "no_payload"
    assert store.get("ok").status == "succeeded"
    new_job(store, "c")
    store.finish("c", Status.CANCELLED, TTL, {"error": "no"})
    other = Store(store.redis, "other-queue")
    assert other.retry("c", 60).outcome == "other_queue"
    assert store.retry("c", 60).outcome == "ok"


def test_a_forced_retry_of_a_success_whose_payload_is_kept_runs_it(store: Store) -> None:
    new_job(store, "ok")
    run(store, "ok")
    store.finish("ok", Status.SUCCEEDED, TTL, {"result": "x"}, token="t")
    store.redis.hset(keys.JOB("ok"), "payload", "{}")  # as an earlier version kept it
    r = store.retry("ok", 60, force=True)
    assert r.outcome == "ok" and store.get("ok").result is None


def test_the_run_a_retry_replaced_writes_nothing(store: Store) -> None:
    new_job(store, "a")
    run(store, "a", token="old")
    store.finish("a", Status.CANCELLED, TTL, {"error": "cancelled by request"})
    assert store.retry("a", 60).outcome == "ok"
    late = store.finish("a", Status.SUCCEEDED, TTL, {"result": "late"}, token="old")
    assert late.outcome == "lost" and store.get("a").status == "queued"
    assert store.renew([("a", "old")], 30) == {"a": "queued"}  # its holder cuts the call


def test_a_rerun_has_webhook_deliveries_of_its_own(store: Store) -> None:
    new_job(store, "a", webhook="http://h/x", webhook_events="completed,started")
    fail(store, "a")
    h = store.redis.hgetall(keys.JOB("a"))
    assert h["webhook_delivery_id"] == "a.started"  # the end waits behind it
    _, seq, _ = store.hook_take("a", 1, 30, 5)
    store.hook_done("a", seq, "delivered", 0, 5, "HTTP 200", 200)
    assert store.redis.hget(keys.JOB("a"), "webhook_delivery_id") == "a.failed"
    seq = int(store.redis.hget(keys.JOB("a"), "webhook_seq"))
    _, seq, _ = store.hook_take("a", seq, 30, 5)
    store.hook_done("a", seq, "delivered", 0, 5, "HTTP 200", 200)
    assert store.retry("a", 60).outcome == "ok"
    fail(store, "a")
    assert store.redis.hget(keys.JOB("a"), "webhook_delivery_id") == "a.started.1"


def test_cancel_running_cuts_only_jobs_on_a_gpu(store: Store) -> None:
    for n in range(3):
        new_job(store, f"r{n}")
        run(store, f"r{n}", token=f"t{n}")
    new_job(store, "queued")
    n, scanned, hooks = store.cancel_running("e", TTL, 60, "cancelled by purge", "cancelled",
                                             limit=2)
    assert (n, scanned, hooks) == (2, 2, [])
    assert store.cancel_running("e", TTL, 60, "cancelled by purge", "cancelled")[0] == 1
    assert store.cancel_running("e", TTL, 60, "x", "cancelled")[1] == 0
    job = store.get("r0")
    assert job.status == "cancelled"
    assert job.error == "cancelled by purge; its GPU call was interrupted"
    assert store.get("queued").status == "queued"
    assert store.renew([("r1", "t1")], 30) == {"r1": "cancelled"}


def test_a_forgotten_endpoint_takes_its_index_with_it(store: Store) -> None:
    new_job(store, "a")
    fail(store, "a")
    assert store.redis.exists(JOB_INDEX("e", "failed"))
    assert store.forget_idle_endpoints(0) == ["e"]
    assert not store.redis.exists(JOB_INDEX("e", "failed"))


def test_a_stream_is_reset_for_a_rerun_only_by_its_holder(store: Store) -> None:
    new_job(store, "s", stream=1)
    run(store, "s", token="t")
    store.redis.xadd(keys.STREAM("s"), {"data": "piece of the broken run"})
    assert not store.stream_reset("s", "someone-else")
    assert store.stream_reset("s", "t") and not store.redis.exists(keys.STREAM("s"))
    store.redis.xadd(keys.STREAM("s"), {"data": "p"})
    store.finish("s", Status.CANCELLED, TTL, {"error": "no"})  # writes the stream's end
    assert not store.stream_reset("s", "t")
    assert store.redis.xlen(keys.STREAM("s")) == 2


def test_stats_carry_each_endpoints_newest_failures(clock: Clock) -> None:
    from dispatcher.ops.stats import collect

    store = make_store()
    for n in range(5):
        new_job(store, f"f{n}")
        fail(store, f"f{n}", "worker_timeout" if n == 4 else "worker_failed")
        clock.sleep(1)
    new_job(store, "x")
    store.finish("x", Status.EXPIRED, TTL, {"error": "no worker", "error_kind": "expired"})
    new_job(store, "ok")
    run(store, "ok")
    store.finish("ok", Status.SUCCEEDED, TTL, {"result": "x"}, token="t")
    got = collect(store)["endpoints"]["e"]["last_failures"]
    assert [(f["id"], f["status"], f["error_kind"]) for f in got] == [
        ("x", "expired", "expired"), ("f4", "failed", "worker_timeout"),
        ("f3", "failed", "worker_failed")]
    assert got[1]["error"] == "boom (worker_timeout)" and got[1]["finished_at"] < clock.t
