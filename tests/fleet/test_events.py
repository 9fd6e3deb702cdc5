"""Celery task events, as Flower sees them: meaningful names and arguments, no payload."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from dispatcher.client import Client
from dispatcher.config import Settings
from dispatcher.dev.procs import wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator, EmulatorConfig
from dispatcher.worker.app import make_app

API_KEY = "events-secret-key-31ff"


def test_worker_events_name_the_endpoint_and_job_never_the_payload(
    redis_server: RedisServer,
) -> None:
    config = EmulatorConfig.from_dict({"api_key": API_KEY, "endpoints": {
        "llm-events": {"workers": 1, "max_workers": 1, "cold_start": 0.1}}})
    secret_prompt = f"do-not-leak-{uuid.uuid4().hex}"
    events: list[dict[str, Any]] = []
    with Emulator(config) as vast:
        env = {"REDIS_URL": redis_server.url, "VAST_API_KEY": API_KEY,
               "VAST_ROUTE_URL": vast.route_url, "DISPATCHER_TASK_EVENTS": "1",
               "DISPATCHER_QUEUE": f"ev-{uuid.uuid4().hex[:6]}"}
        settings = Settings.from_env(env)
        app = make_app(settings)
        stop = threading.Event()

        def listen() -> None:
            with app.connection_for_read() as conn:
                recv = app.events.Receiver(conn, handlers={"*": events.append})
                for _ in recv.itercapture(limit=None, timeout=None, wakeup=False):
                    if stop.is_set():
                        return

        t = threading.Thread(target=listen, daemon=True)
        t.start()
        time.sleep(0.5)  # the receiver's queue is bound before anything is sent
        with worker_process(env, concurrency=4) as w:
            wait_for_worker(redis_server.url, w)
            client = Client(settings, app)
            job_id = client.submit("llm-events", {"prompt": secret_prompt}, path="/x")
            assert client.wait(job_id, timeout=30).status == "succeeded"
            deadline = time.time() + 15
            while time.time() < deadline and not any(
                    e["type"] == "task-succeeded" for e in events):
                time.sleep(0.1)
            stop.set()
            client.close()
    received = [e for e in events if e["type"] == "task-received"]
    assert received, [e["type"] for e in events]
    ev = received[0]
    assert ev["name"] == "dispatch llm-events"
    assert f"job={job_id}" in ev["args"] and "seq=0" in ev["args"]
    assert any(e["type"] == "task-succeeded" and "succeeded" in e.get("result", "")
               for e in events)
    assert secret_prompt not in json.dumps(events, default=str)
    assert API_KEY not in json.dumps(events, default=str)
