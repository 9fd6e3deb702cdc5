"""How a ``wait()`` ends, shared by the sync and asyncio clients.

A waiter reads the job (its fields but the payload), then blocks on the job's end
notice (``Store.wait_end``: one Redis command, woken by the terminal write itself),
then reads the job again. The block is cut every ``RECHECK`` seconds to read the job
anyway, so a notice that was missed (Redis lost it, it expired) costs at most that.
"""

from __future__ import annotations

from dispatcher.errors import JobNotFound, WaitTimeout
from dispatcher.model import Job

# Longest block on the end notice before the job is read again.
RECHECK = 5.0


def next_block(job: Job, left: float, timeout: float, recheck: float = RECHECK
               ) -> float | None:
    """None when the wait is over (the job ended); else how long to block next.

    Raises ``JobNotFound`` for a job that does not exist (any more) and ``WaitTimeout``
    once ``left`` (seconds to the deadline) has run out.
    """
    if job.done:
        return None
    if not job.known:
        raise JobNotFound(job.id)
    if left <= 0:
        raise WaitTimeout(job, timeout)
    return min(left, recheck)
