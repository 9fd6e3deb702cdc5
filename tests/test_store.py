"""Unit tests of the job state transitions (the Lua scripts), on fakeredis."""

from __future__ import annotations

import fakeredis
import pytest

from dispatcher.model import Status
from dispatcher.store import Store


@pytest.fixture
def store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), "q")


def new_job(store: Store, job_id: str = "j1", grace: float = 60.0, priority: int = 0,
            **extra: object) -> None:
    fields = {"id": job_id, "status": Status.QUEUED, "endpoint": "e", "cost": 1.0, "path": "/x",
              "payload": "{}", "max_wait": 10.0, "timeout": 5.0, "priority": priority,
              "queue": store.queue, **extra}
    assert store.create(job_id, fields, grace)


def test_create_is_idempotent_and_enters_safety_net(store: Store) -> None:
    new_job(store)
    assert not store.create("j1", {"status": "queued", "endpoint": "other"}, 60)
    job = store.get("j1")
    assert job.status == "queued" and job.endpoint == "e" and job.created_at
    score = store.redis.zscore(store.waiting, "j1")
    assert score == pytest.approx(job.created_at + 60, abs=1)


def test_an_id_is_an_idempotency_key_until_its_result_expires(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 17: what the README promises, bounded by DISPATCHER_RESULT_TTL."""
    t = [1_800_000_000.25]
    monkeypatch.setattr("time.time", lambda: t[0])  # fakeredis expires keys by it
    store = Store(fakeredis.FakeRedis(decode_responses=True), "q")
    new_job(store)
    assert store.finish("j1", Status.SUCCEEDED, 100, {"result": "r"}).outcome == "ok"
    t[0] += 99
    assert not store.create("j1", {"status": "queued", "endpoint": "e"}, 60)  # still the same
    assert store.get("j1").result == "r"
    t[0] += 2  # past the result TTL: the id names nothing, and a submit with it is new
    assert store.get("j1").status == "unknown"
    new_job(store)
    assert store.get("j1").status == "queued"


def test_unknown_job(store: Store) -> None:
    job = store.get("nope")
    assert job.status == "unknown" and not job.known
    assert store.claim("nope", 0, 30, "t").outcome == "unknown"
    assert store.finish("nope", "failed", 60, {}).outcome == "unknown"
    assert not store.redis.exists("dispatcher:job:nope")


def test_claim_leases_and_rejects_second_holder(store: Store) -> None:
    new_job(store)
    c = store.claim("j1", 0, 30, "a")
    assert c.outcome == "ok" and c.fields["endpoint"] == "e" and c.fields["attempts"] == "1"
    assert "payload" not in c.fields  # fetched only when a GPU is assigned
    # Still in the waiting set, due when the lease ends: a dead holder is recovered.
    assert store.redis.zscore(store.waiting, "j1") == pytest.approx(c.now + 30, abs=0.01)
    assert store.claim("j1", 0, 30, "b").outcome == "busy"
    assert store.claim("j1", 7, 30, "b").outcome == "stale"


def test_expired_lease_can_be_taken_over(store: Store) -> None:
    new_job(store)
    assert store.claim("j1", 0, 0.0, "a").outcome == "ok"
    assert store.claim("j1", 0, 30, "b").outcome == "ok"
    # The old holder lost the job: its writes are refused.
    assert store.schedule("j1", "a", 1.0, {}) == "lost"
    assert not store.mark_running("j1", "a", 30, {})


def test_schedule_bumps_seq_and_makes_old_messages_stale(store: Store) -> None:
    new_job(store)
    store.claim("j1", 0, 30, "a")
    assert store.schedule("j1", "a", 2.0, {"wait_reason": "no worker", "request_idx": 5}) == "ok"
    job = store.get("j1")
    assert job.status == "waiting" and job.wait_reason == "no worker" and job.request_idx == 5
    assert store.claim("j1", 0, 30, "b").outcome == "stale"
    assert store.redis.hget("dispatcher:job:j1", "seq") == "1"
    assert store.redis.zscore(store.waiting, "j1") == pytest.approx(job.next_poll_at, abs=0.01)


def test_move_due_hands_out_each_due_job_once(store: Store) -> None:
    new_job(store, "a", grace=0)
    new_job(store, "b", grace=0)
    new_job(store, "later", grace=100)
    moved = {d.id: (d.seq, d.priority, d.endpoint) for d in store.move_due(10, grace=60)}
    assert moved == {"a": (0, 0, "e"), "b": (0, 0, "e")}
    assert store.move_due(10, grace=60) == []  # due again only after the grace
    store.redis.zadd(store.waiting, {"ghost": 0})
    assert store.move_due(10, grace=60) == []
    assert store.redis.zscore(store.waiting, "ghost") is None


def test_first_terminal_write_wins(store: Store) -> None:
    new_job(store)
    store.claim("j1", 0, 30, "a")
    assert store.mark_running("j1", "a", 60, {"worker_url": "http://w"}).payload == "{}"
    assert store.get("j1").status == "running"
    done = store.finish("j1", "succeeded", 60, {"result": '{"x":1}', "result_type": "json"})
    assert done.outcome == "ok"
    assert store.finish("j1", "failed", 60, {"error": "late"}).outcome == "succeeded"
    job = store.get("j1")
    assert job.status == "succeeded" and job.result == {"x": 1} and job.error is None
    assert store.redis.zscore(store.waiting, "j1") is None
    assert 0 < store.redis.ttl("dispatcher:job:j1") <= 60
    assert store.claim("j1", 0, 30, "b").outcome == "done"


def test_cancel_stops_a_waiting_job(store: Store) -> None:
    new_job(store)
    store.claim("j1", 0, 30, "a")
    store.schedule("j1", "a", 5.0, {})
    assert store.finish("j1", "cancelled", 60, {"error": "cancelled by request"}).outcome == "ok"
    assert store.redis.zscore(store.waiting, "j1") is None
    assert store.claim("j1", 1, 30, "b").outcome == "done"
    assert not store.mark_running("j1", "a", 30, {})


def test_counts_follow_every_transition(store: Store) -> None:
    new_job(store, "a")
    new_job(store, "b")
    new_job(store, "c")
    assert store.counts("e") == {"queued": 3}
    store.claim("a", 0, 30, "t")
    store.schedule("a", "t", 1.0, {})
    store.claim("b", 0, 30, "t")
    store.mark_running("b", "t", 30, {})
    assert store.counts("e") == {"queued": 1, "waiting": 1, "running": 1}
    store.finish("b", "succeeded", 60, {})
    store.finish("b", "failed", 60, {})  # ignored: first write wins, counted once
    store.finish("a", "cancelled", 60, {})
    store.finish("c", "expired", 60, {})
    assert store.counts("e") == {"queued": 0, "waiting": 0, "running": 0, "succeeded": 1,
                                 "cancelled": 1, "expired": 1}


def test_move_due_holds_back_while_the_broker_backlog_is_full(store: Store) -> None:
    for n in range(5):
        new_job(store, f"j{n}", grace=0)
    store.redis.rpush("q", *["m"] * 3)
    store.redis.rpush("q:9", *["m"] * 2)
    assert store.move_due(10, grace=60, max_backlog=5) == []  # 5 queued: full
    assert len(store.move_due(10, grace=60, max_backlog=7)) == 2  # room for 2
    store.redis.delete("q", "q:9")
    assert len(store.move_due(10, grace=60, max_backlog=7)) == 3


def test_a_stale_run_writes_nothing(store: Store) -> None:
    """Issue 11 item 1: a run whose lease another run took over must not write its end."""
    new_job(store)
    assert store.claim("j1", 0, 30, "old").outcome == "ok"
    store.redis.hset("dispatcher:job:j1", "lease_until", "0")  # its lease ran out
    assert store.claim("j1", 0, 30, "new").outcome == "ok"  # a second run holds it now
    assert store.finish("j1", Status.SUCCEEDED, 60, {"result": "stale"}, token="old"
                        ).outcome == "lost"
    assert store.get("j1").status == "queued"
    assert store.finish("j1", Status.SUCCEEDED, 60, {"result": "x"}, token="new").outcome == "ok"
    # A cancel carries no token: it always writes (first terminal write wins as ever).
    new_job(store, "j2")
    assert store.claim("j2", 0, 30, "run").outcome == "ok"
    assert store.finish("j2", Status.CANCELLED, 60, {"error": "by request"}).outcome == "ok"


def test_lease_renewal_reports_jobs_whose_lease_is_gone(store: Store) -> None:
    for job_id in ("a", "b", "c"):
        new_job(store, job_id)
        assert store.claim(job_id, 0, 30, f"tok-{job_id}").outcome == "ok"
    store.finish("b", Status.CANCELLED, 60, {"error": "by request"})
    store.redis.hset("dispatcher:job:c", "lease_token", "someone-else")
    gone = store.renew([("a", "tok-a"), ("b", "tok-b"), ("c", "tok-c")], 30)
    assert gone == {"b": "cancelled", "c": "queued"}
    assert float(store.redis.hget("dispatcher:job:a", "lease_until")) > store.now() + 29
