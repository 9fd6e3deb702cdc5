"""The CLI against a real worker: submit, status, result, cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from dispatcher.emulator import Emulator

from .conftest import add_endpoint

pytestmark = pytest.mark.timeout(120)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatcher", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=90)


def test_submit_wait_status_result(e2e_env, worker, vast: Emulator, tmp_path: Path) -> None:
    ep = add_endpoint(vast)
    payload = {"id": uuid.uuid4().hex, "prompt": "from the CLI"}
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(payload))
    r = cli(e2e_env, "submit", ep, str(path), "--cost", "8", "--path", "/generate", "--wait")
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["result"]["payload"] == payload
    status = cli(e2e_env, "status", job["id"])
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    result = cli(e2e_env, "result", job["id"])
    assert result.returncode == 0 and json.loads(result.stdout)["payload"] == payload
    unknown = cli(e2e_env, "status", "nope")
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["status"] == "unknown"


def test_cancel_and_failed_result(e2e_env, worker, vast: Emulator, tmp_path: Path) -> None:
    stopped = add_endpoint(vast, workers=0, max_workers=0)
    path = tmp_path / "payload.json"
    path.write_text(json.dumps({"id": uuid.uuid4().hex}))
    r = cli(e2e_env, "submit", stopped, str(path), "--path", "/x", "--max-wait", "60")
    job_id = r.stdout.strip()
    assert r.returncode == 0 and job_id
    cancel = cli(e2e_env, "cancel", job_id)
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout
    again = cli(e2e_env, "cancel", job_id)
    assert again.returncode == 1 and "it is cancelled" in again.stderr
    result = cli(e2e_env, "result", job_id, "--wait", "--timeout", "10")
    assert result.returncode == 1 and "cancelled" in result.stderr


def test_worker_queue_flag_sets_the_whole_queue(e2e_env, vast: Emulator) -> None:
    """Issue 11 item 7: ``--queue`` used to change only what Celery consumed; a job that
    had to wait went back to DISPATCHER_QUEUE's waiting set, which nobody moved."""
    from dispatcher.client import Client
    from dispatcher.config import Settings
    from dispatcher.dev.procs import wait_for_worker, worker_process

    queue = f"flag-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in e2e_env.items() if k != "DISPATCHER_QUEUE"}
    child = worker_process(env, concurrency=4, queue=queue)
    child.start()
    client = Client(Settings.from_env({**env, "DISPATCHER_QUEUE": queue}))
    try:
        wait_for_worker(env["REDIS_URL"], child)
        ep = add_endpoint(vast, workers=0, max_workers=1, cold_start=1.0)  # it must wait
        job = client.wait(client.submit(ep, {"id": uuid.uuid4().hex}, path="/x"), timeout=60)
        assert job.status == "succeeded" and job.route_calls > 1, job
    finally:
        client.close()
        child.stop()
