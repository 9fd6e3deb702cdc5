"""The store's operations an asyncio app needs, on ``redis.asyncio``.

The same scripts (``scripts.source``) with the same keys and arguments as the sync
``Store`` (``create_call``, ``finish_call``, ``VIEW_FIELDS``): only the I/O differs.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, NoScriptError, TimeoutError

from dispatcher.model import Job
from dispatcher.store import (
    REDIS_RETRIES,
    VIEW_FIELDS,
    WAIT_SLICE_MIN,
    Finish,
    Rerun,
    create_call,
    finish_call,
    keys,
    parse_finish,
    parse_retry,
    retry_call,
    view_from,
)
from dispatcher.store.scripts import source


def connect(url: str, max_connections: int = 64) -> aredis.Redis:
    """An asyncio Redis client with the sync ``connect``'s pool and retry behaviour."""
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        decode_responses=True,
        socket_keepalive=True,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    return aredis.Redis(connection_pool=pool)


class AsyncStore:
    """One queue's job records, for asyncio: create, read, end."""

    def __init__(self, client: aredis.Redis, queue: str) -> None:
        self.redis = client
        self.queue = queue
        self._create = client.register_script(source("create"))
        self._finish = client.register_script(source("finish"))
        self._retry = client.register_script(source("retry"))

    async def create(self, job_id: str, fields: dict[str, Any], grace: float) -> bool:
        """False if the id exists: a repeated submit is the same job."""
        k, args = create_call(self.queue, job_id, fields, grace)
        return bool(await self._create(keys=k, args=args))

    async def create_many(self, jobs: list[tuple[str, dict[str, Any]]], grace: float
                          ) -> list[bool]:
        """``create`` for many jobs in one pipelined round trip; True where new."""
        p = self.redis.pipeline(transaction=False)
        for job_id, fields in jobs:
            k, args = create_call(self.queue, job_id, fields, grace)
            p.evalsha(self._create.sha, len(k), *k, *args)
        raw = await p.execute(raise_on_error=False)
        for i, r in enumerate(raw):
            if isinstance(r, NoScriptError):  # Redis lost its scripts: that one did not run
                raw[i] = await self.create(*jobs[i], grace)
            elif isinstance(r, Exception):
                raise r
        return [bool(r) for r in raw]

    async def finish(self, job_id: str, status: str, ttl: int, fields: dict[str, Any],
                     wake: int = 0, grace: float = 15.0) -> Finish:
        k, args = finish_call(self.queue, job_id, status, ttl, fields, wake, grace)
        return parse_finish(await self._finish(keys=k, args=args))

    async def retry_many(self, job_ids: list[str], grace: float, force: bool = False
                         ) -> list[Rerun]:
        """``Store.retry_many``: each job queued again (retry.lua), in one round trip."""
        calls = [retry_call(self.queue, job_id, grace, force) for job_id in job_ids]
        p = self.redis.pipeline(transaction=False)
        for k, args in calls:
            p.evalsha(self._retry.sha, len(k), *k, *args)
        raw = await p.execute(raise_on_error=False)
        for i, r in enumerate(raw):
            if isinstance(r, NoScriptError):  # Redis lost its scripts: that one did not run
                raw[i] = await self._retry(keys=calls[i][0], args=calls[i][1])
            elif isinstance(r, Exception):
                raise r
        return [parse_retry(job_id, r) for job_id, r in zip(job_ids, raw, strict=True)]

    async def view(self, job_id: str) -> Job:
        """The job as an app sees it, without reading its payload."""
        values = await self.redis.hmget(keys.JOB(job_id), VIEW_FIELDS)
        return view_from(job_id, cast(list[str | None], values))

    async def subscribe(self, job_id: str, client: aredis.Redis | None = None
                        ) -> aredis.client.PubSub:
        """``Store.subscribe``: the job's status changes."""
        sub = (client or self.redis).pubsub(ignore_subscribe_messages=True)
        await sub.subscribe(keys.EVENTS(job_id))
        return sub

    async def wait_end(self, job_id: str, timeout: float, client: aredis.Redis | None = None
                       ) -> str | None:
        """``Store.wait_end``: the end status, or None after ``timeout``."""
        r = client or self.redis
        k = keys.DONE(job_id)
        block = round(max(WAIT_SLICE_MIN, timeout), 3)
        got = await r.blmove(k, k, block, "LEFT", "LEFT")  # type: ignore[arg-type]
        return cast(str | None, got)

    async def read_stream(self, job_id: str, after: str, block: float,
                          client: aredis.Redis | None = None, count: int = 1000
                          ) -> list[tuple[str, dict[str, str]]]:
        """``Store.read_stream``: entries after ``after``, blocking up to ``block`` s."""
        r = client or self.redis
        got = cast(list[Any], await r.xread({keys.STREAM(job_id): after}, count=count,
                                            block=max(1, int(block * 1000))))
        return cast(list[tuple[str, dict[str, str]]], got[0][1] if got else [])

    async def close(self) -> None:
        await self.redis.aclose()
