"""Priority under contention, end to end: one GPU slot, many jobs; the urgent ones go first,
both from the Celery queue and from the waiting set."""

from __future__ import annotations

import time
import uuid

import pytest

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator, EmulatorConfig

API_KEY = "prio-secret-key-77aa"
LOW, HIGH = 1, 8
N = 15


def _env(redis_server: RedisServer, vast: Emulator) -> dict[str, str]:
    return {
        "REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY, "VAST_ROUTE_URL": vast.route_url,
        "DISPATCHER_QUEUE": f"prio-{uuid.uuid4().hex[:6]}",
        "DISPATCHER_POLL_BASE": "0.2", "DISPATCHER_POLL_CAP": "1",
        "DISPATCHER_MOVER_INTERVAL": "0.02",
    }


def _order(client: Client, ids: dict[str, int]) -> list[int]:
    """Priorities in the order the jobs got their GPU."""
    deadline = time.time() + 90
    while True:
        jobs = [client.get_job(i) for i in ids]
        if all(j.done for j in jobs) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert all(j.status == "succeeded" for j in jobs), [j.status for j in jobs]
    return [ids[j.id] for j in sorted(jobs, key=lambda j: j.assigned_at)]


def _inversions(order: list[int]) -> int:
    """Pairs where a low-priority job got the GPU before a high-priority one."""
    return sum(1 for i, a in enumerate(order) for b in order[i + 1:] if a < b)


def _lows_ahead(order: list[int]) -> int:
    """Slots a low-priority job took while a high-priority one still waited."""
    last_high = max(i for i, p in enumerate(order) if p == HIGH)
    return order[:last_high].count(LOW)


@pytest.fixture
def vast() -> Emulator:
    config = EmulatorConfig.from_dict({"api_key": API_KEY, "seed": 11, "endpoints": {}})
    with Emulator(config) as emulator:
        yield emulator


def _one_slot(vast: Emulator, cold: float, workers: int) -> str:
    ep = f"prio-{uuid.uuid4().hex[:6]}"
    vast.configure({"endpoints": {ep: {
        "workers": workers, "max_workers": 1, "cold_start": cold, "concurrency": 1,
        "max_queue_time": 0.0, "latency": {"kind": "fixed", "seconds": 0.15}}}})
    return ep


def test_queued_jobs_run_most_urgent_first(redis_server: RedisServer, vast: Emulator) -> None:
    """Jobs queued before any worker runs: the Celery queue hands out priority 8 first."""
    env = _env(redis_server, vast)
    ep = _one_slot(vast, cold=0.0, workers=1)
    client = Client(Settings.from_env(env))
    ids = {client.submit(ep, {"n": n}, path="/x", priority=LOW): LOW for n in range(N)}
    ids |= {client.submit(ep, {"n": n}, path="/x", priority=HIGH): HIGH for n in range(N)}
    with worker_process(env, concurrency=1) as w:
        wait_for_worker(redis_server.url, w)
        order = _order(client, ids)
    client.close()
    print(f"\nqueued order: {''.join('H' if p == HIGH else 'l' for p in order)}")
    assert order[:N].count(HIGH) >= N - 1, order
    assert _inversions(order) <= N


def test_waiting_jobs_get_freed_gpu_slots_most_urgent_first(
    redis_server: RedisServer, vast: Emulator,
) -> None:
    """All jobs wait through a cold start; then one GPU slot serves them one at a time.
    Each freed slot wakes the most urgent waiting job and holds the slot for it, so
    priority 8 drains first."""
    # Each job polls at most every 3 s: a low-priority poll already in flight when a
    # slot frees can still win it (no hold can stop a call already made), and those
    # races grow with how often low jobs poll.
    env = {**_env(redis_server, vast), "DISPATCHER_POLL_CAP": "3"}
    ep = _one_slot(vast, cold=3.0, workers=0)
    with worker_process(env, concurrency=16) as w:
        wait_for_worker(redis_server.url, w)
        client = Client(Settings.from_env(env))
        ids = {client.submit(ep, {"n": n}, path="/x", priority=LOW): LOW for n in range(N)}
        ids |= {client.submit(ep, {"n": n}, path="/x", priority=HIGH): HIGH for n in range(N)}
        order = _order(client, ids)
        client.close()
    # The first job is whoever polled when the GPU came up; after that, urgent first.
    ahead = _lows_ahead(order[1:])
    print(f"\nwaiting order: {''.join('H' if p == HIGH else 'l' for p in order)}, "
          f"{ahead} low jobs ahead of a waiting high one, "
          f"{_inversions(order[1:])} inversions after the first")
    # A random order puts about N/2 low jobs ahead; measured here: 2 in 12 runs of 14 slots.
    assert ahead <= 3, order
