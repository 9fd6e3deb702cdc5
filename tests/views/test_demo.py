"""``dispatcher demo`` shows its dashboard: the address printed while it runs, served by
the gateway it started, opened by ``--dashboard`` (webbrowser, through $BROWSER: here a
script that writes down what it was asked to open)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.timeout(180)

ADDRESS = re.compile(r"Dashboard: (http://127\.0\.0\.1:\d+/)")


def demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    opened = tmp_path / "opened.txt"
    opener = tmp_path / "browser.py"
    opener.write_text(f"import sys\nopen({str(opened)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    env = {**os.environ, "COLUMNS": "200", "BROWSER": f"{sys.executable} {opener} %s"}
    for name in ("REDIS_URL", "DISPATCHER_QUEUE", "VAST_ROUTE_URL"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "demo", "--jobs", "20",
                             "--cold-start", "6", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, opened


def stop(proc: subprocess.Popen[str]) -> None:
    """A demo left running by a failure: SIGTERM (it stops its children), then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 90) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"demo never printed {pattern!r}:\n{seen}")


def test_demo_prints_the_dashboard_address_and_serves_it(tmp_path: Path) -> None:
    proc, opened = demo(tmp_path)
    try:
        out = read_until(proc, ADDRESS.pattern)
        url = ADDRESS.search(out).group(1)  # type: ignore[union-attr]
        assert "--dashboard opens it" in out
        page = requests.get(url, timeout=10)  # loopback, no auth: the demo's own gateway
        assert page.status_code == 200 and "dashboard.js" in page.text
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "20 jobs in" in out and not opened.exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)  # stopped with the demo
    finally:
        stop(proc)


def test_demo_dashboard_opens_the_page_and_stays_up(tmp_path: Path) -> None:
    proc, opened = demo(tmp_path, "--dashboard")
    try:
        out = read_until(proc, ADDRESS.pattern)
        url = ADDRESS.search(out).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while not opened.exists():
            assert time.monotonic() < deadline, "webbrowser.open was not called"
            time.sleep(0.1)
        assert opened.read_text().split() == [url]
        read_until(proc, r"The dashboard stays up at " + re.escape(url))
        deadline = time.monotonic() + 20  # the page's figures are the last sample's
        while True:
            doc = requests.get(url + "dashboard/data", timeout=10).json()
            s = doc["endpoints"]["demo-llm"]
            if s["succeeded"] + s["failed"] + s["expired"] == 20:
                break
            assert time.monotonic() < deadline, s
            time.sleep(0.5)
        # The gateway sampled from before the jobs: the cold start is on the chart.
        points = doc["history"]["points"]["demo-llm"]
        assert points[0][1] > 0 and points[-1][1] == 0, points
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Stopped the gateway" in out, out
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=5)
    finally:
        stop(proc)
