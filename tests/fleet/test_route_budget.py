"""The fleet's route budget, end to end: 10,000 waiting jobs, 4 worker processes, one
Redis, the emulator (a separate process) rate-limiting /route/ with 429s like Vast.

Shows: no 429 storm while the endpoint is cold, route calls stay under the budget,
pickup after the first GPU is ready stays within the poll cap, and a purge ends
every job still waiting (nothing lost).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import EmulatorProcess, wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer

API_KEY = "fleet-secret-key-5c4b"
JOBS = 10_000
ROUTE_RATE = 20.0  # our budget, calls/s for the endpoint, shared by all processes
VAST_LIMIT = {"rate": 25.0, "burst": 10.0}  # the emulator answers 429 above this
POLL_CAP = 5.0  # the default
COLD_START = 40.0
WATCH_AFTER_READY = 12.0


@contextmanager
def fleet(config: dict[str, Any], env: dict[str, str], procs: int
          ) -> Iterator[tuple[EmulatorProcess, Client]]:
    """The emulator in its own process, ``procs`` worker processes, and a client."""
    with EmulatorProcess(config) as emu, ExitStack() as stack:
        env["VAST_ROUTE_URL"] = emu.route_url
        workers = [worker_process(env, concurrency=16, name=f"w{i}") for i in range(procs)]
        for w in workers:
            stack.enter_context(w)
        for w in workers:
            wait_for_worker(env["REDIS_URL"], w, timeout=60)
        client = Client(Settings.from_env(env))
        stack.callback(client.close)
        yield emu, client


def _ready_workers(emu: EmulatorProcess, ep: str) -> int:
    try:
        return int(emu.stats()["endpoints"][ep].get("ready", 0))
    except Exception:  # busy: ask again
        return 0


@pytest.mark.timeout(400)
def test_ten_thousand_waiting_jobs_no_429_storm_and_prompt_pickup(
    redis_server: RedisServer,
) -> None:
    ep = "fleet-llm"
    config = {
        "api_key": API_KEY, "seed": 3, "rate_limit": VAST_LIMIT,
        # No worker can start until every job is in: however long submitting takes on a
        # loaded machine, the endpoint is cold when the test looks.
        "endpoints": {ep: {"workers": 0, "max_workers": 0, "cold_start": COLD_START,
                           "concurrency": 8, "latency": {"kind": "fixed", "seconds": 0.05}}},
    }
    env = {
        "REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
        "DISPATCHER_QUEUE": f"fleet-{uuid.uuid4().hex[:6]}",
        "DISPATCHER_ROUTE_RATE": str(ROUTE_RATE), "DISPATCHER_POLL_CAP": str(POLL_CAP),
    }
    with fleet(config, env, 4) as (emu, client):
        t_submit = t0 = time.time()
        ids = client.submit_many([{"endpoint": ep, "payload": {"n": i}, "path": "/generate",
                                   "cost": 1, "max_wait": 900, "timeout": 60}
                                  for i in range(JOBS)])
        submitted = time.time() - t0
        assert len(set(ids)) == JOBS
        before = emu.stats()["route"]
        assert before["assigned"] == 0, "the endpoint must still be cold here"
        emu.configure({"endpoints": {ep: {"max_workers": 4}}})  # the cold start begins
        t0 = time.time()

        while not _ready_workers(emu, ep):
            assert time.time() - t0 < COLD_START + 60, "no GPU worker ever became ready"
            time.sleep(0.05)
        ready_at = time.time()
        first_pickup = None
        while time.time() < ready_at + WATCH_AFTER_READY:
            s = client.stats()["endpoints"][ep]
            if first_pickup is None and s["running"] + s["succeeded"] > 0:
                first_pickup = time.time() - ready_at
            time.sleep(0.05)
        route = emu.stats()["route"]
        elapsed = time.time() - t_submit  # route calls are counted from the first submit
        stats = client.stats()["endpoints"][ep]

        cancelled = client.purge(ep)
        deadline = time.time() + 60
        while True:
            counts = client.stats()["endpoints"][ep]
            if counts["running"] == 0 or time.time() > deadline:
                break
            time.sleep(0.2)

    calls = route["calls"]
    print(f"\nroute budget: {JOBS} jobs submitted in {submitted:.1f}s; cold {COLD_START:g}s; "
          f"{calls} route calls in {elapsed:.1f}s ({calls / elapsed:.1f}/s, budget "
          f"{ROUTE_RATE:g}/s, Vast limit {VAST_LIMIT['rate']:g}/s); "
          f"429s {route['rate_limited']}; first pickup {first_pickup:.2f}s after ready; "
          f"{stats['succeeded']} done in the {WATCH_AFTER_READY:g}s after; purge cancelled "
          f"{cancelled}")
    # No 429 storm: the shared budget keeps the whole fleet under Vast's limit.
    assert route["rate_limited"] <= max(5, 0.01 * calls), route
    # ...and polls at most at the budget (plus its burst), not at 10,000 jobs / poll cap.
    assert calls <= ROUTE_RATE * elapsed * 1.1 + 10, route
    assert calls >= ROUTE_RATE * elapsed * 0.5, "the budget should be used, not wasted"
    # Pickup after readiness within the poll cap.
    assert first_pickup is not None and first_pickup <= POLL_CAP, first_pickup
    # Once ready, jobs flow at about the budget's rate (each job needs its own route call).
    assert stats["succeeded"] >= ROUTE_RATE * (WATCH_AFTER_READY - POLL_CAP) * 0.5, stats
    # Nothing lost: every job ended or was purged; none left waiting.
    assert counts["queued"] == counts["waiting"] == 0, counts
    ended = sum(counts[k] for k in ("succeeded", "failed", "expired", "cancelled"))
    assert ended + counts["running"] == JOBS and counts["failed"] == counts["expired"] == 0
    assert cancelled >= JOBS - stats["succeeded"] - stats["running"] - 200


def _route_window(emu: EmulatorProcess, seconds: float) -> tuple[int, int]:
    """(route calls, 429s) at the emulator over the next ``seconds``."""
    a = emu.stats()["route"]
    time.sleep(seconds)
    b = emu.stats()["route"]
    return b["calls"] - a["calls"], b["rate_limited"] - a["rate_limited"]


@pytest.mark.timeout(300)
def test_429s_back_the_whole_fleet_off_then_it_recovers(redis_server: RedisServer) -> None:
    """Our budget (40/s) is above what Vast allows (8/s): the first 429s halve the fleet's
    rate until they stop; once Vast allows more, the rate climbs back to the budget."""
    ep = "fleet-tight"
    budget = 40.0
    config = {
        "api_key": API_KEY, "seed": 5, "rate_limit": {"rate": 8.0, "burst": 4.0},
        "endpoints": {ep: {"workers": 0, "max_workers": 1, "cold_start": 600}},
    }
    env = {
        "REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
        "DISPATCHER_QUEUE": f"tight-{uuid.uuid4().hex[:6]}",
        "DISPATCHER_ROUTE_RATE": str(budget), "DISPATCHER_ROUTE_RECOVER": "2",
    }
    with fleet(config, env, 2) as (emu, client):
        for i in range(2000):
            client.submit(ep, {"n": i}, path="/x", max_wait=600)
        time.sleep(3)  # the first 429s arrive and the fleet backs off
        tight_calls, tight_429 = _route_window(emu, 12)
        levels = client.stats()["endpoints"][ep]
        emu.configure({"rate_limit": {"rate": 500.0, "burst": 100.0}})
        time.sleep(10)  # four levels come back, one every 2 s
        open_calls, open_429 = _route_window(emu, 5)
        client.purge(ep)
    print(f"\n429 backoff: Vast at 8/s: {tight_calls / 12:.1f} calls/s, {tight_429} x 429 "
          f"({tight_429 / max(1, tight_calls):.0%}); level {levels['route_backoff_level']}; "
          f"after Vast allows more: {open_calls / 5:.1f} calls/s, {open_429} x 429")
    # Without backoff the fleet would call at 40/s and ~80% would be 429s.
    # With it, the share hovers near the 1-in-5 that triggers a cut.
    assert tight_calls / 12 < 16 and tight_429 / max(1, tight_calls) < 0.4
    assert levels["route_429s"] > 0
    # Recovered: back near the budget, and no new 429s.
    assert open_calls / 5 > 0.5 * budget and open_429 == 0


@pytest.mark.timeout(300)
def test_with_no_configured_rate_the_fleet_learns_vasts_limit(redis_server: RedisServer) -> None:
    """DISPATCHER_ROUTE_RATE=0: no limit until Vast refuses; then the fleet calls at about
    what Vast let through, probing 25% higher per quiet period, instead of storming
    again each time it recovers."""
    ep = "fleet-unknown"
    limit = 8.0
    config = {
        "api_key": API_KEY, "seed": 7, "rate_limit": {"rate": limit, "burst": 4.0},
        "endpoints": {ep: {"workers": 0, "max_workers": 1, "cold_start": 600}},
    }
    env = {
        "REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
        "DISPATCHER_QUEUE": f"learn-{uuid.uuid4().hex[:6]}",
        "DISPATCHER_ROUTE_RATE": "0", "DISPATCHER_ROUTE_RECOVER": "2",
    }
    with fleet(config, env, 2) as (emu, client):
        for i in range(2000):
            client.submit(ep, {"n": i}, path="/x", max_wait=600)
        time.sleep(4)  # the first storm is refused and the fleet learns
        calls, limited = _route_window(emu, 16)
        s = client.stats()["endpoints"][ep]
        client.purge(ep)
    print(f"\nlearned rate: Vast at {limit:g}/s: {calls / 16:.1f} calls/s, {limited} x 429 "
          f"({limited / max(1, calls):.0%}); rate in force {s['route_rate']}, "
          f"level {s['route_backoff_level']}")
    # Settled around Vast's limit: neither a storm (hundreds of calls/s, most refused)
    # nor stuck far below it.
    assert 0.5 * limit <= calls / 16 <= 1.6 * limit
    assert limited / max(1, calls) < 0.25
    assert s["route_rate"] is not None and s["route_rate"] <= 2 * limit
