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
