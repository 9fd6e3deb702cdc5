"""End-to-end fixtures: real Redis, the emulator over HTTP, a real Celery worker process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import Child, wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator, EmulatorConfig

API_KEY = "e2e-secret-key-9f8e7d"

# Fast polling so that tests of waiting finish in seconds.
WORKER_ENV = {
    "DISPATCHER_POLL_BASE": "0.05",
    "DISPATCHER_POLL_CAP": "0.3",
    "DISPATCHER_MOVER_INTERVAL": "0.02",
    "DISPATCHER_MAX_REROUTES": "3",
    "VAST_ROUTE_TIMEOUT": "5",
    # A 429 halves the fleet's route rate; give a halving back every second.
    "DISPATCHER_ROUTE_RECOVER": "1",
    # Short leases: a GPU call longer than this must keep its lease by renewing it.
    "DISPATCHER_LEASE": "3",
}


@pytest.fixture(scope="module")
def vast() -> Iterator[Emulator]:
    config = EmulatorConfig.from_dict({"api_key": API_KEY, "seed": 7, "endpoints": {}})
    with Emulator(config) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def e2e_env(redis_server: RedisServer, vast: Emulator) -> dict[str, str]:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    return {
        **WORKER_ENV,
        "REDIS_URL": redis_server.url,
        "VAST_API_KEY": API_KEY,
        "VAST_ROUTE_URL": vast.route_url,
        "DISPATCHER_QUEUE": queue,
    }


@pytest.fixture(scope="module")
def worker(e2e_env: dict[str, str]) -> Iterator[Child]:
    child = worker_process(e2e_env, concurrency=32)
    child.start()
    try:
        wait_for_worker(e2e_env["REDIS_URL"], child)
        yield child
    finally:
        child.stop()


@pytest.fixture(scope="module")
def client(e2e_env: dict[str, str], worker: Child) -> Iterator[Client]:
    settings = Settings.from_env(e2e_env)
    c = Client(settings)
    yield c
    c.close()


def add_endpoint(vast: Emulator, **config: Any) -> str:
    """A fresh endpoint for one test, so tests never see each other's workers."""
    name = f"ep-{uuid.uuid4().hex[:8]}"
    defaults = {"workers": 2, "max_workers": 2, "cold_start": 0.5, "concurrency": 4,
                "latency": {"kind": "fixed", "seconds": 0.01}}
    vast.configure({"endpoints": {name: {**defaults, **config}}})
    return name
