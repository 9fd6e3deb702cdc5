"""The dashboard with Redis stopped under it, then started again: the data says so at once
and keeps the last figures, recovers, and the gateway still stops at once (its sampler
reads through a store that fails fast, not one that rides out a restart)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import requests

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import GatewayProcess
from dispatcher.dev.redis_server import RedisServer
from tests.poll import until

pytestmark = pytest.mark.timeout(120)


def _data(url: str) -> dict:
    r = requests.get(url + "/dashboard/data", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _until(url: str, check: Callable[[dict], object]) -> dict:
    """The dashboard's data once ``check`` holds for it: read every 0.3 s, up to 30 s."""
    return until(lambda: _data(url), check, timeout=30.0, every=0.3)


def test_dashboard_when_redis_stops_and_comes_back() -> None:
    with RedisServer() as server:
        client = Client(Settings(redis_url=server.url))
        client.submit("ep-down", {"n": 1}, path="/x", max_wait=600)  # no worker: it waits
        client.close()
        gateway = GatewayProcess({"REDIS_URL": server.url}).start()
        try:
            doc = _until(gateway.url, lambda d: "ep-down" in d["endpoints"])
            assert doc["error"] is None and doc["endpoints"]["ep-down"]["queued"] == 1
            server.stop()
            doc = _until(gateway.url, lambda d: d["error"] is not None)
            assert doc["error"].startswith("stats unavailable: ")
            assert doc["endpoints"]["ep-down"]["queued"] == 1  # the last figures, kept
            assert "redis://" not in doc["error"]
            server.start()  # the same port
            _until(gateway.url, lambda d: d["error"] is None)
            server.stop()
            _until(gateway.url, lambda d: d["error"] is not None)
            # Stopping while the sampler's reads fail: no job store retries to wait out.
            # (A hang check with a wide bound, not a speed measure.)
            gateway.send_signal(signal.SIGTERM)
            assert gateway.proc is not None
            gateway.proc.wait(30)
            log = gateway.log_text()
            assert log.count("dashboard: stats unavailable") == 2, log  # once per outage
        finally:
            gateway.stop()
