"""dispatcher.aio through a real worker process, real Redis and the emulator."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from dispatcher.aio import AsyncClient
from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.emulator import Emulator
from dispatcher.errors import InvalidJob, WaitTimeout
from dispatcher.store import keys

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")


def run(e2e_env: dict[str, str], body: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run ``body`` with a fresh AsyncClient on a fresh event loop."""
    async def main() -> T:
        async with AsyncClient(Settings.from_env(e2e_env)) as c:
            return await body(c)
    return asyncio.run(main())


def payload(**extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "prompt": "hi", **extra}


def test_submit_and_wait_through_a_real_worker(e2e_env: dict[str, str], worker: Any,
                                               vast: Emulator) -> None:
    ep = add_endpoint(vast)
    p = payload()

    async def body(c: AsyncClient) -> Any:
        job_id = await c.submit(ep, p, path="/v1/completions", cost=5)
        return await c.wait(job_id, timeout=30)

    job = run(e2e_env, body)
    assert job.status == "succeeded", job
    assert job.result["payload"] == p and job.result["path"] == "/v1/completions"
    assert vast.stats()["executions_by_payload"][p["id"]] == 1


def test_many_concurrent_submits_and_waits_on_one_loop(e2e_env: dict[str, str], worker: Any,
                                                       vast: Emulator) -> None:
    ep = add_endpoint(vast, latency={"kind": "fixed", "seconds": 0.2})
    payloads = [payload(n=n) for n in range(40)]

    async def one(c: AsyncClient, p: dict[str, Any]) -> Any:
        return await c.wait(await c.submit(ep, p, path="/gen"), timeout=60)

    async def body(c: AsyncClient) -> list[Any]:
        return await asyncio.gather(*(one(c, p) for p in payloads))

    jobs = run(e2e_env, body)
    assert [j.result["payload"] for j in jobs] == payloads
    assert {j.status for j in jobs} == {"succeeded"}


def test_the_event_loop_never_makes_a_blocking_redis_call(
        e2e_env: dict[str, str], worker: Any, vast: Emulator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every blocking (sync redis-py) socket write, Celery's publishes included, is
    recorded with its thread: none may come from the event loop's thread, while submits,
    batch submits, waits, reads and cancels (with a webhook to publish) are under way."""
    import redis.connection

    threads: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", recording)
    ep = add_endpoint(vast, latency={"kind": "fixed", "seconds": 0.05})

    async def body(c: AsyncClient) -> int:
        ids = [await c.submit(ep, payload(n=n), path="/gen") for n in range(5)]
        ids += await c.submit_many([{"endpoint": ep, "payload": payload(), "path": "/gen"}
                                    for _ in range(5)])
        jobs = await asyncio.gather(*(c.wait(i, timeout=60) for i in ids))
        await c.get_job(ids[0])
        await c.cancel(await c.submit(ep, payload(), path="/gen"))
        await c.stats()
        assert {j.status for j in jobs} == {"succeeded"}
        return threading.get_ident()

    loop_thread = run(e2e_env, body)
    assert threads, "the recorder saw no sync redis call at all (Celery publishes are sync)"
    assert loop_thread not in threads


def test_same_validation_and_errors_as_the_sync_client(e2e_env: dict[str, str],
                                                       client: Client) -> None:
    cases: list[dict[str, Any]] = [
        {"cost": -1}, {"path": "v1"}, {"priority": 10}, {"max_wait": 0},
        {"job_id": "bad id!"}, {"webhook": "ftp://x"},
    ]
    for bad in cases:
        with pytest.raises(InvalidJob) as sync_err:
            client.submit("ep", {"a": 1}, **{"path": "/x", **bad})

        async def body(c: AsyncClient, bad: dict[str, Any] = bad) -> Any:
            return await c.submit("ep", {"a": 1}, **{"path": "/x", **bad})

        with pytest.raises(InvalidJob) as async_err:
            run(e2e_env, body)
        assert str(async_err.value) == str(sync_err.value)
        assert async_err.value.field == sync_err.value.field


def test_both_clients_write_the_same_record(e2e_env: dict[str, str]) -> None:
    """One builder (dispatcher.submission): a job queued by either is the same hash but
    for its id and created_at. On a queue no worker reads, so nothing else writes to it."""
    env = {**e2e_env, "DISPATCHER_QUEUE": f"unread-{uuid.uuid4().hex[:6]}"}
    client = Client(Settings.from_env(env))
    args: dict[str, Any] = {"path": "/x", "cost": 3, "priority": 4, "max_wait": 30}
    sync_id = client.submit("ep", {"a": [1, 2]}, job_id=f"s-{uuid.uuid4().hex}", **args)

    async def body(c: AsyncClient) -> str:
        return await c.submit("ep", {"a": [1, 2]}, job_id=f"a-{uuid.uuid4().hex}", **args)

    async_id = run(env, body)
    r = client.store.redis
    a, b = r.hgetall(keys.job_key(sync_id)), r.hgetall(keys.job_key(async_id))
    assert a.pop("id") == sync_id and b.pop("id") == async_id
    assert a.pop("created_at") and b.pop("created_at")
    assert a == b and a["payload"] == '{"a":[1,2]}' and a["status"] == "queued"
    client.cancel_many([sync_id, async_id])
    client.close()


def test_repeated_job_id_is_the_same_job(e2e_env: dict[str, str], worker: Any,
                                         vast: Emulator) -> None:
    ep = add_endpoint(vast)
    jid = f"idem-{uuid.uuid4().hex}"
    p = payload()

    async def body(c: AsyncClient) -> tuple[Any, ...]:
        first = await c.submit_job(ep, p, path="/gen", job_id=jid)
        second = await c.submit_job(ep, payload(), path="/gen", job_id=jid)
        return first, second, await c.wait(jid, timeout=30)

    first, second, job = run(e2e_env, body)
    assert first == (jid, True) and second == (jid, False)
    assert job.result["payload"] == p
    assert vast.stats()["executions_by_payload"][p["id"]] == 1


def test_cancel_and_get_job(e2e_env: dict[str, str], worker: Any, vast: Emulator) -> None:
    ep = add_endpoint(vast, workers=0, max_workers=1, cold_start=30)

    async def body(c: AsyncClient) -> tuple[Any, ...]:
        job_id = await c.submit(ep, payload(), path="/gen")
        before = await c.get_job(job_id)
        cancelled = await c.cancel(job_id)
        again = await c.cancel(job_id)
        return before, cancelled, again, await c.get_job(job_id), await c.get_job("nope-x")

    before, cancelled, again, after, unknown = run(e2e_env, body)
    assert before.status in ("queued", "waiting")
    assert cancelled is True and again is False
    assert after.status == "cancelled" and after.error_kind == "cancelled"
    assert unknown.status == "unknown"


def test_wait_timeout(e2e_env: dict[str, str], worker: Any, vast: Emulator) -> None:
    ep = add_endpoint(vast, workers=0, max_workers=1, cold_start=30)

    async def body(c: AsyncClient) -> Any:
        job_id = await c.submit(ep, payload(), path="/gen")
        try:
            await c.wait(job_id, timeout=0.5)
        finally:
            await c.cancel(job_id)

    with pytest.raises(WaitTimeout) as err:
        run(e2e_env, body)
    assert err.value.job.status in ("queued", "waiting")


def test_module_functions_use_one_client_per_loop(e2e_env: dict[str, str], worker: Any,
                                                  vast: Emulator,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  request: pytest.FixtureRequest) -> None:
    import dispatcher
    from dispatcher import aio
    from dispatcher.config import get_settings

    for k, v in e2e_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(dispatcher, "_app", None)
    get_settings.cache_clear()  # read once per process: this test's environment
    request.addfinalizer(get_settings.cache_clear)
    ep = add_endpoint(vast)
    seen: list[Any] = []

    async def main() -> Any:
        job = await aio.wait(await aio.submit(ep, payload(), path="/gen"), timeout=30)
        seen.append(aio.default_client())
        await aio.default_client().aclose()
        return job

    results = [asyncio.run(main()) for _ in range(2)]
    threading.Thread(target=lambda: results.append(asyncio.run(main()))).start()
    deadline = time.monotonic() + 30
    while len(results) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [j.status for j in results] == ["succeeded"] * 3
    assert len({id(c) for c in seen}) == 3


def test_async_stream_and_sse_follow_a_streaming_job(e2e_env: dict[str, str], worker: Any,
                                                     vast: Emulator) -> None:
    from dispatcher.emulator import expected_stream
    from dispatcher.errors import JobFailed

    ep = add_endpoint(vast)
    ok = payload(emulate={"stream": {"pieces": 8, "interval": 0.05, "format": "ndjson"}})
    broken = payload(emulate={"stream": {"pieces": 8, "interval": 0.05, "drop_after": 3}})

    async def body(c: AsyncClient) -> Any:
        first = await c.submit(ep, ok, path="/v1/completions", stream=True)
        pieces = [p async for p in c.stream(first, timeout=60)]
        chunks = [b async for b in c.sse(first, timeout=60)]
        second = await c.submit(ep, broken, path="/v1/completions", stream=True)
        got: list[str] = []
        with pytest.raises(JobFailed) as e:
            async for p in c.stream(second, timeout=60):
                got.append(p)
        return pieces, chunks, got, e.value.job

    pieces, chunks, got, failed = run(e2e_env, body)
    assert pieces == expected_stream(ok).pieces
    assert chunks[-1].startswith(b"event: end\n") and len(chunks) == len(pieces) + 1
    assert got == expected_stream(broken).delivered
    assert failed.status == "failed" and failed.error_kind == "worker_stream_broken"
