"""vast-dispatcher: queued inference jobs on Vast.ai Serverless GPUs.

    import dispatcher
    job_id = dispatcher.submit("my-endpoint", {"prompt": "hi"}, cost=64, path="/v1/completions")
    job = dispatcher.wait(job_id, timeout=60)

``celery -A dispatcher worker`` runs the worker (it finds ``dispatcher.app``).

The tree follows the data path: ``client.py`` (submit) -> ``dispatch.py`` (one run:
claim, route, forward, finish) over ``vast/`` (Vast's route API and GPU workers) and
``store/`` (every Redis transition, one Lua script each). ``worker/`` is the Celery
wiring, ``webhooks/`` the deliveries, ``ops/`` the operators' tools, ``dev/`` the
demo and test harness, ``emulator/`` a local Vast.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dispatcher.config import Settings, get_settings
from dispatcher.errors import (
    ConfigError,
    DispatcherError,
    InvalidJob,
    JobFailed,
    JobNotFound,
    RetryRefused,
    RouteError,
    VastError,
    WaitTimeout,
    WebhookSignatureError,
    WorkerError,
)
from dispatcher.model import STATUSES, Job, Status

if TYPE_CHECKING:
    from celery import Celery

    from dispatcher.client import Client

__all__ = [
    "STATUSES", "Client", "ConfigError", "DispatcherError", "InvalidJob", "Job", "JobFailed",
    "JobNotFound", "RetryRefused", "RouteError", "Settings", "Status", "VastError",
    "WaitTimeout", "WebhookSignatureError", "WorkerError", "app", "cancel", "cancel_many",
    "get_job", "list_jobs", "purge", "retry", "retry_failed", "retry_many", "sse", "stats",
    "stream", "submit", "submit_many", "wait", "watch",
]

_app: Celery | None = None
_default: Client | None = None
_lock = threading.RLock()


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a submodule (dispatcher.dispatch) does not import Celery.
    if name == "app":
        return get_app()
    if name == "Client":
        from dispatcher.client import Client

        return Client
    raise AttributeError(f"module 'dispatcher' has no attribute {name!r}")


def get_app() -> Celery:
    """The Celery app built from the environment; ``celery -A dispatcher`` uses it."""
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                from dispatcher.worker.app import make_app

                _app = make_app(get_settings(), main=True)
    return _app


def default_client() -> Client:
    """The client built from the environment (REDIS_URL, DISPATCHER_*), made on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                from dispatcher.client import Client

                app = get_app()
                _default = Client(app.dispatcher_settings, app)
    return _default


def submit(endpoint: str, payload: Any, **options: Any) -> str:
    return default_client().submit(endpoint, payload, **options)


def submit_many(jobs: Any) -> list[str]:
    """Queue many jobs (mappings of ``submit``'s arguments); their ids, in order."""
    return default_client().submit_many(jobs)


def get_job(job_id: str) -> Job:
    return default_client().get_job(job_id)


def wait(job_id: str, timeout: float = 60.0) -> Job:
    return default_client().wait(job_id, timeout=timeout)


def watch(job_id: str, timeout: float | None = None) -> Iterator[Job]:
    """The job now and at each change of its status until it ends (``Client.watch``)."""
    return default_client().watch(job_id, timeout)


def stream(job_id: str, timeout: float | None = None) -> Iterator[str]:
    """A streaming job's pieces in order, from the first, until it ends; raises
    ``JobFailed`` if it did not succeed (``Client.stream``)."""
    return default_client().stream(job_id, timeout)


def sse(job_id: str, timeout: float | None = None) -> Iterator[bytes]:
    """``stream()`` as ``text/event-stream`` bytes, for a web framework's streaming
    response: ``data:`` per piece, then ``event: end`` with the status (``Client.sse``)."""
    return default_client().sse(job_id, timeout)


def cancel(job_id: str) -> bool:
    return default_client().cancel(job_id)


def cancel_many(job_ids: list[str]) -> list[str]:
    return default_client().cancel_many(job_ids)


def purge(endpoint: str, running: bool = False) -> int:
    """Cancel all queued and waiting jobs of an endpoint, and with ``running`` those on a
    GPU (their calls are cut); returns how many."""
    return default_client().purge(endpoint, running)


def list_jobs(endpoint: str | None = None, status: str | Sequence[str] | None = None,
              **options: Any) -> list[Job]:
    """Jobs by endpoint and status, the latest first (``Client.list_jobs``: ``limit``,
    ``kind``, ``since``)."""
    return default_client().list_jobs(endpoint, status, **options)


def retry(job_id: str, force: bool = False) -> bool:
    """Run an ended job again with its payload and settings (``Client.retry``)."""
    return default_client().retry(job_id, force)


def retry_many(job_ids: Iterable[str], force: bool = False) -> dict[str, str]:
    """``retry`` for many jobs: each id's outcome ("ok" where queued)."""
    return default_client().retry_many(job_ids, force)


def retry_failed(endpoint: str, **options: Any) -> list[str]:
    """Run again the failed jobs of an endpoint (``Client.retry_failed``: ``since``,
    ``kind``, ``status``); the ids queued."""
    return default_client().retry_failed(endpoint, **options)


def stats() -> dict[str, Any]:
    """Per-endpoint queue health: jobs by state, oldest wait, route calls/s, 429s,
    success/failure counts and p50/p95 wait and run times (see the README)."""
    return default_client().stats()
