"""Finding jobs: the job index (store/lua/lib/index.lua) read by endpoint and status, for
``list_jobs``, ``dispatcher jobs`` and ``retry --failed``. Reads only, never a scan."""

from __future__ import annotations

from collections.abc import Sequence

from dispatcher.errors import InvalidJob
from dispatcher.model import STATUSES, Job
from dispatcher.store import Store


def names(field: str, value: str | Sequence[str] | None, allowed: Sequence[str] | None = None
           ) -> list[str] | None:
    """A filter given as one name or several; None for no filter."""
    if value is None:
        return None
    got = [value] if isinstance(value, str) else list(value)
    bad = [n for n in got if not isinstance(n, str) or (allowed and n not in allowed)]
    if bad or not got:
        raise InvalidJob(field, f"must be one or more of {list(allowed or [])}, got {value!r}"
                         if allowed else f"must be a non-empty string or list, got {value!r}")
    return got


def find_jobs(store: Store, endpoint: str | None = None,
              status: str | Sequence[str] | None = None, *, limit: int | None = 50,
              kind: str | Sequence[str] | None = None, since: float | None = None
              ) -> list[Job]:
    """``Client.list_jobs``, checked: a bad filter raises ``InvalidJob`` naming it."""
    statuses = names("status", status, STATUSES) or list(STATUSES)
    kinds = names("kind", kind)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise InvalidJob("limit", f"must be an integer >= 1 (or None for all), got {limit!r}")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)
                              or not since > 0):
        raise InvalidJob("since", f"must be a number of seconds > 0, got {since!r}")
    endpoints = [endpoint] if endpoint is not None else store.endpoints()
    low = None if since is None else store.now() - since
    return store.list_jobs(endpoints, statuses, limit, low, kinds)
