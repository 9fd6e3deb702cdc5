"""Waiting in tests: poll until a property holds, within a deadline, never for a guessed
time (a fixed sleep is a flake on a loaded 2-core machine)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def until(read: Callable[[], T], ok: Callable[[T], object] = bool, *, timeout: float = 10.0,
          every: float = 0.02, what: str = "") -> T:
    """``read()`` again every ``every`` seconds until ``ok`` holds for it (by default: it
    is truthy); returns that value, or fails after ``timeout`` showing the last one."""
    deadline = time.monotonic() + timeout
    while not ok(value := read()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for "
                                 f"{what or read}; last: {value!r}")
        time.sleep(every)
    return value


def until_status(client: Any, job_id: str, status: str, timeout: float = 10.0) -> Any:
    """The job, once it reads ``status`` (``client``: a ``dispatcher.Client``)."""
    return until(lambda: client.get_job(job_id), lambda job: job.status == status,
                 timeout=timeout, what=f"job {job_id} to be {status}")
