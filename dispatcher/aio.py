"""The client API for asyncio apps (FastAPI, Starlette, aiohttp), on ``redis.asyncio``.

    from dispatcher import aio

    job_id = await aio.submit("my-endpoint", {"prompt": "hi"}, path="/v1/completions")
    job = await aio.wait(job_id, timeout=60)

The same arguments, checks and errors as ``dispatcher.submit`` and friends (both build
jobs with ``dispatcher.submission``). Redis is awaited, never called from the event loop;
the Celery message is published from a small thread pool, because Celery's producer is
synchronous (see ``AsyncClient.publish``).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis.asyncio as aredis

from dispatcher.config import Settings, get_settings
from dispatcher.errors import JobFailed, JobNotFound, WaitTimeout
from dispatcher.model import Envelope, Job, Status
from dispatcher.store import hook_envelope
from dispatcher.store.aio import AsyncStore, connect
from dispatcher.streams import Follow, result_text, sse_data, sse_end
from dispatcher.submission import NewJob, first_of_each, new_job, new_jobs, retry_answer
from dispatcher.waits import RECHECK, next_block

if TYPE_CHECKING:
    from celery import Celery

    from dispatcher.worker.publish import CeleryPublisher

__all__ = ["AsyncClient", "cancel", "cancel_many", "default_client", "get_job", "list_jobs",
           "retry", "retry_many", "submit", "submit_many", "wait", "watch"]

SUBMIT_CHUNK = 500  # jobs per pipelined round trip in submit_many
PUBLISH_THREADS = 4


class AsyncClient:
    """One asyncio Redis pool and one Celery app. Use it from one event loop."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None,
                 publish_threads: int = PUBLISH_THREADS) -> None:
        from dispatcher.worker.app import make_app
        from dispatcher.worker.publish import CeleryPublisher

        self.settings = settings or get_settings()
        self.app = app or make_app(self.settings)
        self.publisher: CeleryPublisher = CeleryPublisher(self.app, self.settings.queue)
        self.store = AsyncStore(connect(self.settings.redis_url, 64), self.settings.queue)
        self._threads = ThreadPoolExecutor(publish_threads,
                                           thread_name_prefix="dispatcher-publish")
        self._waits: aredis.Redis | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- submit ----------------------------------------------------------------------

    async def submit(
        self,
        endpoint: str,
        payload: Any,
        *,
        path: str,
        cost: float = 100.0,
        max_wait: float | None = None,
        timeout: float | None = None,
        priority: int = 0,
        job_id: str | None = None,
        webhook: str | None = None,
        webhook_events: Sequence[str] = ("completed",),
        stream: bool = False,
        max_reroutes: int | None = None,
        retry_on: Sequence[str] | None = None,
    ) -> str:
        """Queue a job; returns its id (see ``dispatcher.submit``)."""
        job_id, _ = await self.submit_job(
            endpoint, payload, path=path, cost=cost, max_wait=max_wait, timeout=timeout,
            priority=priority, job_id=job_id, webhook=webhook, webhook_events=webhook_events,
            stream=stream, max_reroutes=max_reroutes, retry_on=retry_on)
        return job_id

    async def submit_job(self, endpoint: Any, payload: Any, **options: Any
                         ) -> tuple[str, bool]:
        """``submit`` that also says whether this call created the job (False: the
        ``job_id`` existed, and the existing job stands)."""
        job = new_job(self.settings, endpoint, payload, **options)
        return job.id, await self.submit_checked(job)

    async def submit_checked(self, job: NewJob) -> bool:
        """Write and publish a job ``dispatcher.submission`` built; False if its id
        existed (the existing job stands)."""
        created = await self.store.create(job.id, job.fields, self.settings.publish_grace)
        if created:
            await self.publish([job.envelope])
        return created

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]], chunk: int = SUBMIT_CHUNK
                          ) -> list[str]:
        """Queue many jobs; ids in order (see ``dispatcher.Client.submit_many``)."""
        return [job_id async for part in self.submit_chunks(jobs, chunk) for job_id in part]

    async def submit_chunks(self, jobs: Iterable[Mapping[str, Any]],
                            chunk: int = SUBMIT_CHUNK) -> AsyncIterator[list[str]]:
        """``submit_many`` one chunk at a time; every job is checked before the first
        chunk is written."""
        async for part in self.submit_checked_many(new_jobs(self.settings, jobs), chunk):
            yield part

    async def submit_checked_many(self, checked: list[NewJob], chunk: int = SUBMIT_CHUNK
                                  ) -> AsyncIterator[list[str]]:
        """``submit_chunks`` of jobs already built by ``dispatcher.submission``."""
        step = max(1, chunk)
        for i in range(0, len(checked), step):
            part = checked[i:i + step]
            created = await self.store.create_many([(j.id, j.fields) for j in part],
                                                   self.settings.publish_grace)
            await self.publish(first_of_each(part, created))
            yield [j.id for j in part]

    async def publish(self, envelopes: list[Envelope]) -> None:
        """Celery's producer is synchronous, so it runs in this client's threads: a
        publish is a few hundred microseconds of socket I/O that must not stall the loop.
        A failed publish loses nothing: the job is in the waiting set, republished by a
        worker's mover after ``DISPATCHER_PUBLISH_GRACE``."""
        if not envelopes:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._threads, self.publisher.publish, envelopes)
        except Exception as e:
            import logging

            logging.getLogger("dispatcher.aio").warning(
                "%d message(s) not published now (%s); a worker's mover sends them",
                len(envelopes), type(e).__name__)

    # --- read, wait, cancel ------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        return await self.store.view(job_id)

    async def wait(self, job_id: str, timeout: float = 60.0, recheck: float = RECHECK
                   ) -> Job:
        """Until the job ends, woken by its end (see ``dispatcher.waits``); raises
        ``WaitTimeout`` if it does not in time, ``JobNotFound`` if there is no such job."""
        deadline = time.monotonic() + timeout
        job = await self.store.view(job_id)
        while (block := next_block(job, deadline - time.monotonic(), timeout, recheck)):
            await self.store.wait_end(job_id, block, self._blocking())
            job = await self.store.view(job_id)
        return job

    async def watch(self, job_id: str, timeout: float | None = None,
                    recheck: float = RECHECK) -> AsyncIterator[Job]:
        """The job now, then at each change of its status or wait reason until it ends
        (see ``dispatcher.Client.watch``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sub = await self.store.subscribe(job_id, self._blocking())
        try:
            job = await self.store.view(job_id)
            shown = None
            while True:
                if shown != (job.status, job.wait_reason):
                    shown = (job.status, job.wait_reason)
                    yield job
                left = None if deadline is None else deadline - time.monotonic()
                block = next_block(job, 1e9 if left is None else left, timeout or 0, recheck)
                if block is None:
                    return
                await sub.get_message(timeout=block)
                job = await self.store.view(job_id)
        finally:
            await sub.aclose()

    def _blocking(self) -> aredis.Redis:
        """Blocking calls get a pool of their own: waits never starve submits."""
        if self._waits is None:
            self._waits = connect(self.settings.redis_url, self.settings.max_waiters)
        return self._waits

    async def stream(self, job_id: str, timeout: float | None = None,
                     recheck: float = RECHECK) -> AsyncIterator[str]:
        """A streaming job's pieces in order, from the first, as they arrive, until it
        ends (see ``dispatcher.Client.stream``: the same loop, ``streams.Follow``)."""
        job = await self.store.view(job_id)
        if not job.known:
            raise JobNotFound(job_id)
        if not job.stream:
            job = await self.wait(job_id, 1e9 if timeout is None else timeout, recheck)
            if job.status != Status.SUCCEEDED:
                raise JobFailed(job)
            yield result_text(job)
            return
        follow = Follow(timeout, recheck)
        while follow.end is None:
            if follow.expired():
                raise WaitTimeout(await self.store.view(job_id), timeout or 0)
            entries = await self.store.read_stream(job_id, follow.last, follow.block(),
                                                   self._blocking())
            for piece in follow.feed(entries):
                yield piece
            if not entries and not (await self.store.view(job_id)).known:
                raise JobNotFound(job_id)
        if follow.end != Status.SUCCEEDED:
            raise JobFailed(await self.store.view(job_id))

    async def sse(self, job_id: str, timeout: float | None = None) -> AsyncIterator[bytes]:
        """``stream()`` as ``text/event-stream`` bytes (see ``dispatcher.Client.sse``), for
        a Starlette ``StreamingResponse`` or an aiohttp ``StreamResponse``."""
        try:
            async for piece in self.stream(job_id, timeout):
                yield sse_data(piece)
        except JobFailed as e:
            yield sse_end(e.job)
            return
        yield sse_end(await self.store.view(job_id))

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not ended; True if this call cancelled it."""
        return bool(await self.cancel_many([job_id]))

    async def cancel_many(self, job_ids: Iterable[str]) -> list[str]:
        """Cancel jobs that have not ended; returns the ids this call cancelled."""
        s = self.settings
        cancelled, hooks = [], []
        for job_id in job_ids:
            done = await self.store.finish(
                job_id, Status.CANCELLED, s.result_ttl,
                {"error": "cancelled by request", "error_kind": "cancelled"},
                grace=s.publish_grace)
            if done.outcome == "ok":
                cancelled.append(job_id)
                if done.hook:
                    hooks.append(hook_envelope(job_id))
        await self.publish(hooks)
        return cancelled

    async def retry(self, job_id: str, force: bool = False) -> bool:
        """Run an ended job again (``dispatcher.retry``): True if this call queued it."""
        return retry_answer(job_id, (await self.retry_many([job_id], force))[job_id])

    async def retry_many(self, job_ids: Iterable[str], force: bool = False
                         ) -> dict[str, str]:
        """``dispatcher.retry_many``: each id's outcome, "ok" where this call queued it."""
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, str] = {}
        for i in range(0, len(ids), SUBMIT_CHUNK):
            part = ids[i:i + SUBMIT_CHUNK]
            done = await self.store.retry_many(part, self.settings.publish_grace, force)
            out.update((job_id, r.outcome) for job_id, r in zip(part, done, strict=True))
            await self.publish([r.envelope for r in done if r.envelope is not None])
        return out

    async def list_jobs(self, endpoint: str | None = None,
                        status: str | Sequence[str] | None = None, **options: Any
                        ) -> list[Job]:
        """``dispatcher.list_jobs`` (a few reads of the job index), in a thread."""
        from dispatcher.ops.jobs import find_jobs

        def read() -> list[Job]:
            return find_jobs(self._sync(), endpoint, status, **options)

        return await asyncio.get_running_loop().run_in_executor(self._threads, read)

    async def stats(self) -> dict[str, Any]:
        """Per-endpoint queue health (``dispatcher.stats``), read in a thread."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._stats)

    def _sync(self) -> Any:
        """A small sync store for the reads done in a thread (stats, listings)."""
        from dispatcher.store import Store
        from dispatcher.store import connect as sync_connect

        store = getattr(self, "_sync_store", None)
        if store is None:
            store = self._sync_store = Store(sync_connect(self.settings.redis_url, 4),
                                             self.settings.queue, self.settings.route_budget())
        return store

    def _stats(self) -> dict[str, Any]:
        from dispatcher.ops.stats import collect

        return collect(self._sync())

    async def ping(self) -> bool:
        return bool(await self.store.redis.ping())

    async def aclose(self) -> None:
        await self.store.close()
        if self._waits is not None:
            await self._waits.aclose()
        store = getattr(self, "_sync_store", None)
        if store is not None:
            store.redis.close()
        self._threads.shutdown(wait=False)


# --- module functions: one client per event loop, built from the environment ----------

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
    weakref.WeakKeyDictionary())


def default_client() -> AsyncClient:
    """The running loop's client (REDIS_URL, DISPATCHER_*), made on first use: a
    ``redis.asyncio`` connection belongs to the loop it was opened in."""
    import dispatcher

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        app = dispatcher.get_app()
        client = _clients[loop] = AsyncClient(app.dispatcher_settings, app)
    return client


async def submit(endpoint: str, payload: Any, **options: Any) -> str:
    return await default_client().submit(endpoint, payload, **options)


async def submit_many(jobs: Iterable[Mapping[str, Any]]) -> list[str]:
    return await default_client().submit_many(jobs)


async def get_job(job_id: str) -> Job:
    return await default_client().get_job(job_id)


async def wait(job_id: str, timeout: float = 60.0) -> Job:
    return await default_client().wait(job_id, timeout=timeout)


async def watch(job_id: str, timeout: float | None = None) -> AsyncIterator[Job]:
    """The job at each change until it ends (``AsyncClient.watch``)."""
    async for job in default_client().watch(job_id, timeout):
        yield job


async def stream(job_id: str, timeout: float | None = None) -> AsyncIterator[str]:
    """A streaming job's pieces, from the first, until it ends (``AsyncClient.stream``)."""
    async for piece in default_client().stream(job_id, timeout):
        yield piece


async def sse(job_id: str, timeout: float | None = None) -> AsyncIterator[bytes]:
    """``stream()`` as ``text/event-stream`` bytes (``AsyncClient.sse``)."""
    async for chunk in default_client().sse(job_id, timeout):
        yield chunk


async def cancel(job_id: str) -> bool:
    return await default_client().cancel(job_id)


async def cancel_many(job_ids: Iterable[str]) -> list[str]:
    return await default_client().cancel_many(job_ids)


async def retry(job_id: str, force: bool = False) -> bool:
    return await default_client().retry(job_id, force)


async def retry_many(job_ids: Iterable[str], force: bool = False) -> dict[str, str]:
    return await default_client().retry_many(job_ids, force)


async def list_jobs(endpoint: str | None = None, status: str | Sequence[str] | None = None,
                    **options: Any) -> list[Job]:
    return await default_client().list_jobs(endpoint, status, **options)
