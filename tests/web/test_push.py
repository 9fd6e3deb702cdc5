"""wait() is woken by the job's end (lib/notify.lua), not by polling: real worker, real
Redis, the emulator. Commands are counted at the client; no wall-clock speed asserted."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatcher.aio import AsyncClient
from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.emulator import Emulator
from dispatcher.errors import JobNotFound, WaitTimeout
from dispatcher.model import Status
from dispatcher.store import VIEW_FIELDS, keys

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(120)

SLOW = {"kind": "fixed", "seconds": 1.0}


def payload() -> dict[str, Any]:
    return {"id": uuid.uuid4().hex}


class Commands:
    """Redis commands sent from one thread, by name: sync and asyncio clients alike."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import redis.asyncio

        self.sent: dict[int, list[tuple[Any, ...]]] = {}
        sync_exec = redis.Redis.execute_command
        async_exec = redis.asyncio.Redis.execute_command

        def record(args: tuple[Any, ...]) -> None:
            self.sent.setdefault(threading.get_ident(), []).append(args)

        def sync_wrapper(r: Any, *args: Any, **kw: Any) -> Any:
            record(args)
            return sync_exec(r, *args, **kw)

        async def async_wrapper(r: Any, *args: Any, **kw: Any) -> Any:
            record(args)
            return await async_exec(r, *args, **kw)

        monkeypatch.setattr(redis.Redis, "execute_command", sync_wrapper)
        monkeypatch.setattr(redis.asyncio.Redis, "execute_command", async_wrapper)

    def names(self, thread: int | None = None) -> list[str]:
        return [str(a[0]) for a in self.sent.get(thread or threading.get_ident(), [])]


@pytest.fixture
def unread(e2e_env: dict[str, str]) -> Iterator[Client]:
    """A client on a queue no worker reads: jobs stay as the test writes them."""
    c = Client(Settings.from_env({**e2e_env, "DISPATCHER_QUEUE": f"u-{uuid.uuid4().hex[:6]}"}))
    yield c
    c.close()


def test_a_wait_is_three_commands_and_one_while_waiting(
        client: Client, vast: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = add_endpoint(vast, latency=SLOW)
    job_id = client.submit(ep, payload(), path="/gen")
    commands = Commands(monkeypatch)
    started = time.monotonic()
    job = client.wait(job_id, timeout=60, recheck=30)
    took = time.monotonic() - started
    assert job.status == "succeeded"
    # Read, block until woken, read: the block ended long before the 30 s re-check.
    assert commands.names() == ["HMGET", "BLMOVE", "HMGET"]
    assert took < 25


def test_asyncio_wait_is_three_commands_too(e2e_env: dict[str, str], worker: Any,
                                            vast: Emulator,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ep = add_endpoint(vast, latency=SLOW)

    async def main() -> tuple[Any, list[str]]:
        async with AsyncClient(Settings.from_env(e2e_env)) as c:
            job_id = await c.submit(ep, payload(), path="/gen")
            commands = Commands(monkeypatch)
            job = await c.wait(job_id, timeout=60, recheck=30)
            return job, commands.names()

    job, names = asyncio.run(main())
    assert job.status == "succeeded"
    assert names == ["HMGET", "BLMOVE", "HMGET"]


def test_wait_reads_no_payload(client: Client, vast: Emulator,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    ep = add_endpoint(vast, latency=SLOW)
    job_id = client.submit(ep, {"big": "x" * 200_000}, path="/gen")
    commands = Commands(monkeypatch)
    client.wait(job_id, timeout=60)
    client.get_job(job_id)
    reads = [a for a in commands.sent[threading.get_ident()] if a[0] == "HMGET"]
    assert reads and all("payload" not in a for a in reads)
    assert "payload" not in VIEW_FIELDS and "result" in VIEW_FIELDS


def test_many_waiters_on_one_job_all_wake(e2e_env: dict[str, str], client: Client,
                                          vast: Emulator) -> None:
    ep = add_endpoint(vast, latency=SLOW)
    job_id = client.submit(ep, payload(), path="/gen")
    results: list[Any] = []

    def sync_waiter() -> None:
        results.append(client.wait(job_id, timeout=60, recheck=30).status)

    async def async_waiters() -> None:
        async with AsyncClient(Settings.from_env(e2e_env)) as c:
            jobs = await asyncio.gather(*(c.wait(job_id, timeout=60, recheck=30)
                                          for _ in range(10)))
            results.extend(j.status for j in jobs)

    threads = [threading.Thread(target=sync_waiter) for _ in range(10)]
    threads.append(threading.Thread(target=lambda: asyncio.run(async_waiters())))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["succeeded"] * 20
    assert time.monotonic() - started < 25  # woken, not re-checked after 30 s


def test_a_waiter_that_comes_after_the_end_returns_at_once(
        client: Client, vast: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = add_endpoint(vast)
    job_id = client.submit(ep, payload(), path="/gen")
    assert client.wait(job_id, timeout=60).status == "succeeded"
    commands = Commands(monkeypatch)
    assert client.wait(job_id, timeout=60).status == "succeeded"
    assert commands.names() == ["HMGET"]


def test_a_missed_notice_costs_one_recheck(unread: Client) -> None:
    """The job ends without its notice (written behind the scripts' back, as a notice
    lost by a Redis restart would be): the waiter sees it at its next re-check."""
    job_id = unread.submit("ep", payload(), path="/gen")
    r = unread.store.redis

    def end_silently() -> None:
        time.sleep(0.3)
        r.hset(keys.job_key(job_id), mapping={"status": Status.SUCCEEDED, "result": "ok",
                                              "result_type": "text"})

    threading.Thread(target=end_silently).start()
    job = unread.wait(job_id, timeout=30, recheck=0.5)
    assert job.status == "succeeded" and job.result == "ok"


def test_the_end_notice_wakes_a_waiter_on_its_own(unread: Client) -> None:
    """Ended by the store's finish script (no worker): the notice alone wakes it."""
    job_id = unread.submit("ep", payload(), path="/gen")

    def cancel_soon() -> None:
        time.sleep(0.3)
        unread.cancel(job_id)

    threading.Thread(target=cancel_soon).start()
    started = time.monotonic()
    job = unread.wait(job_id, timeout=60, recheck=30)
    assert job.status == "cancelled" and time.monotonic() - started < 25
    ttl = unread.store.redis.ttl(keys.DONE(job_id))
    assert 0 < ttl <= keys.NOTIFY_TTL
    assert unread.store.redis.lrange(keys.DONE(job_id), 0, -1) == ["cancelled"]


def test_wait_raises_on_an_unknown_job(client: Client) -> None:
    with pytest.raises(JobNotFound) as err:
        client.wait("never-submitted-" + uuid.uuid4().hex, timeout=5)
    assert "never submitted" in str(err.value) and "noeviction" in str(err.value)


def test_wait_raises_when_the_job_vanishes_while_waited_on(unread: Client,
                                                           e2e_env: dict[str, str]) -> None:
    """An evicted job: its hash disappears with no end. The re-check finds it gone."""
    job_id = unread.submit("ep", payload(), path="/gen")
    r = unread.store.redis
    threading.Timer(0.3, lambda: r.delete(keys.job_key(job_id))).start()
    with pytest.raises(JobNotFound):
        unread.wait(job_id, timeout=30, recheck=0.5)

    async def main() -> None:
        async with AsyncClient(Settings.from_env(e2e_env)) as c:
            await c.wait("never-" + uuid.uuid4().hex, timeout=5)

    with pytest.raises(JobNotFound):
        asyncio.run(main())


def test_wait_timeout_still_raises(unread: Client) -> None:
    job_id = unread.submit("ep", payload(), path="/gen")
    with pytest.raises(WaitTimeout) as err:
        unread.wait(job_id, timeout=0.3)
    assert err.value.job.status == "queued"
    unread.cancel(job_id)


def test_every_status_change_is_published(unread: Client) -> None:
    """Watchers' channel: the transitions in order, from the scripts that make them."""
    r = unread.store.redis
    job_id = f"pub-{uuid.uuid4().hex}"
    sub = r.pubsub()
    sub.subscribe(keys.EVENTS(job_id))
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    unread.submit("ep", payload(), path="/gen", job_id=job_id)
    unread.cancel(job_id)
    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        m = sub.get_message(timeout=1)
        if m and m["type"] == "message":
            seen.append(m["data"])
    sub.close()
    assert seen == ["queued", "cancelled"]


def test_blocking_waits_use_their_own_pool(unread: Client) -> None:
    """Threads blocked in wait() hold connections of the wait pool only, so a submit
    still gets one from the main pool (32) with 40 waiters blocked."""
    ids = [unread.submit("ep", payload(), path="/gen") for _ in range(40)]
    threads = [threading.Thread(target=lambda i=i: _quiet_wait(unread, i)) for i in ids]
    for t in threads:
        t.start()
    time.sleep(0.5)
    extra = unread.submit("ep", payload(), path="/gen")  # would block 30 s if starved
    assert unread.get_job(extra).status == "queued"
    unread.cancel_many([*ids, extra])
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


def _quiet_wait(c: Client, job_id: str) -> None:
    try:
        c.wait(job_id, timeout=20)
    except (WaitTimeout, redis.RedisError):
        pass
