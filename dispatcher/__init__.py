"""vast-dispatcher: queued inference jobs on Vast.ai Serverless GPUs.

    import dispatcher
    job_id = dispatcher.submit("my-endpoint", {"prompt": "hi"}, cost=64, path="/v1/completions")
    job = dispatcher.wait(job_id, timeout=60)

``celery -A dispatcher worker`` runs the worker (it finds ``dispatcher.app``).
"""

from __future__ import annotations

import threading
from typing import Any

from dispatcher.celery_app import make_app
from dispatcher.client import Client, WaitTimeout
from dispatcher.jobs import STATUSES, Job
from dispatcher.settings import Settings, get_settings
from dispatcher.validation import InvalidJob

__all__ = [
    "STATUSES", "Client", "InvalidJob", "Job", "Settings", "WaitTimeout", "app",
    "cancel", "get_job", "submit", "wait",
]

app = make_app(get_settings(), main=True)

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The client built from the environment (REDIS_URL, DISPATCHER_*), made on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client(app.dispatcher_settings, app)
    return _default


def submit(endpoint: str, payload: Any, **options: Any) -> str:
    return default_client().submit(endpoint, payload, **options)


def get_job(job_id: str) -> Job:
    return default_client().get_job(job_id)


def wait(job_id: str, timeout: float = 60.0) -> Job:
    return default_client().wait(job_id, timeout=timeout)


def cancel(job_id: str) -> bool:
    return default_client().cancel(job_id)
