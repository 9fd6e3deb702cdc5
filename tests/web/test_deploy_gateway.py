"""The gateway as the Procfile (`web:`) and docker compose run it."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import requests
import yaml

from dispatcher.dev.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def web_command() -> str:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())["web"]


def test_compose_runs_the_procfile_web_command() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    cmd = service["command"][-1]
    assert cmd.endswith("exec " + web_command().replace("${PORT:-8080}", "8080"))
    assert "[gateway]" in cmd
    assert service["ports"] == ["127.0.0.1:8080:8080"]
    assert service["environment"]["DISPATCHER_GATEWAY_TOKEN"].startswith(
        "${DISPATCHER_GATEWAY_TOKEN:?")  # compose refuses to start it without one


def test_the_procfile_web_command_serves(redis_server: RedisServer) -> None:
    """Run as honcho/Heroku do (a shell, $PORT set); only loopback is talked to."""
    token = uuid.uuid4().hex
    env = {**os.environ, "PORT": "0", "REDIS_URL": redis_server.url,
           "DISPATCHER_GATEWAY_TOKEN": token, "DISPATCHER_QUEUE": "procfile-web"}
    proc = subprocess.Popen(["sh", "-c", "exec " + web_command()], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("dispatcher gateway on http://0.0.0.0:"), line
        port = line.split()[3].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                assert requests.get(url + "/healthz", timeout=5).json() == {"ok": True}
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert requests.get(url + "/v1/stats", timeout=5).status_code == 401
        r = requests.get(url + "/v1/stats", headers={"Authorization": f"Bearer {token}"},
                         timeout=5)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    # Without a token, the same command refuses to start on 0.0.0.0.
    env.pop("DISPATCHER_GATEWAY_TOKEN")
    out = subprocess.run(["sh", "-c", "exec " + web_command()], env=env, text=True,
                         capture_output=True, timeout=30)
    assert out.returncode == 2 and "DISPATCHER_GATEWAY_TOKEN is not set" in out.stderr
