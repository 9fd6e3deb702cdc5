"""``dispatcher top`` in a real terminal: tmux at 80x24 and at 200x50, against a live
worker, Redis and the emulator; the figures read off the screen against stats()."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.client import Client
from dispatcher.emulator import Emulator
from dispatcher.ops.top import FAILURES_LABEL
from dispatcher.ops.views import seconds

from .conftest import add_endpoint

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("tmux") is None,
                                 reason="tmux is not installed (.ci/run installs it)")]

LABELS = ["queued", "waiting", "running", "oldest wait", "ok", "failed", "expired",
          "cancelled", "route/s", "429s", "deferred", "route calls", "wait p50", "wait p95",
          "run p50", "run p95"]
PENDING = 7


@pytest.fixture(scope="module")
def scene(client: Client, vast: Emulator) -> Iterator[dict[str, Any]]:
    """An endpoint with 5 jobs done, one failed (worker_rejected), then scaled to zero
    with 7 waiting for a GPU that does not come."""
    ep = add_endpoint(vast)
    done = [client.submit(ep, {"n": n}, path="/x") for n in range(5)]
    bad = client.submit(ep, {"n": "bad", "emulate": {"status": 422}}, path="/x")
    for job_id in [*done, bad]:
        assert client.wait(job_id, timeout=30).done
    assert client.get_job(bad).status == "failed"
    vast.configure({"endpoints": {ep: {"workers": 0, "max_workers": 0}}})
    vast.configure({"action": "stop_all", "endpoint": ep})
    waiting = [client.submit(ep, {"n": n}, path="/x", max_wait=600) for n in range(PENDING)]
    deadline = time.monotonic() + 20
    while client.stats()["endpoints"][ep]["waiting"] < 1:
        assert time.monotonic() < deadline, client.stats()["endpoints"][ep]
        time.sleep(0.1)
    yield {"ep": ep, "bad": client.get_job(bad), "waiting": waiting}
    client.cancel_many(waiting)


class Tmux:
    """A tmux server of the test's own (-L), one detached session of a given size."""

    def __init__(self, env: dict[str, str], cols: int, rows: int, command: list[str]) -> None:
        self.socket = f"dispatcher-top-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, **env}
        # The shell keeps the pane open after top exits, so its last words stay readable.
        script = f"{shlex.join(command)}; echo; echo TOP-EXITED $?; sleep 600"
        self.run("new-session", "-d", "-x", str(cols), "-y", str(rows), "-s", "top", script)

    def run(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-L", self.socket, *args], env=self.env,
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def size(self) -> tuple[int, int]:
        cols, rows = self.run("display-message", "-p", "-t", "top",
                              "#{pane_width} #{pane_height}").split()
        return int(cols), int(rows)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env,
                       capture_output=True, timeout=20)


def block_of(screen: str, ep: str) -> list[str]:
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(ep))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def figures(block: list[str]) -> dict[str, str]:
    """label -> value of the cells on the grid lines (between the header and the
    sparklines)."""
    grid = " \n ".join(line for line in block[1:]
                       if not line.lstrip().startswith(("pending", "done/s", FAILURES_LABEL)))
    found = {}
    for label in LABELS:
        m = re.search(rf"(?:^|\s){re.escape(label)} +(\S+(?: L\d+)?)", grid)
        if m:
            found[label] = m.group(1)
    return found


def top_screen(e2e_env: dict[str, str], cols: int, rows: int, ep: str,
               ready: Any) -> tuple[Tmux, str]:
    tmux = Tmux(e2e_env, cols, rows,
                [sys.executable, "-m", "dispatcher", "top", "--interval", "0.5"])
    try:
        assert tmux.size() == (cols, rows)
        deadline = time.monotonic() + 60
        screen = ""
        while time.monotonic() < deadline:
            screen = tmux.screen()
            assert "TOP-EXITED" not in screen, screen
            if ep in screen and ready(screen):
                return tmux, screen
            time.sleep(0.3)
        raise AssertionError(f"top never showed the figures:\n{screen}")
    except BaseException:
        tmux.close()
        raise


@pytest.mark.parametrize("cols,rows", [(80, 24), (200, 50)])
def test_top_in_a_real_terminal(e2e_env: dict[str, str], client: Client,
                                scene: dict[str, Any], cols: int, rows: int) -> None:
    ep = scene["ep"]

    def ready(screen: str) -> bool:
        # The pending sparkline has drawn several reads of the 7 waiting jobs.
        block = block_of(screen, ep)
        spark = next((line for line in block if line.lstrip().startswith("pending")), "")
        return bool(re.search(rf"[▁▂▃▄▅▆▇█]{{4}} +{PENDING}\b", spark))

    tmux, screen = top_screen(e2e_env, cols, rows, ep, ready)
    try:
        print(screen)  # seen with pytest -s
        s = client.stats()["endpoints"][ep]
        lines = screen.splitlines()
        assert len(lines) <= rows and all(len(line) <= cols for line in lines), screen
        block = block_of(screen, ep)
        got = figures(block)
        assert set(got) == set(LABELS), (sorted(set(LABELS) - set(got)), screen)
        # Jobs move between the Celery queue and the waiting set at every poll: their
        # sum is what stays put while no GPU comes.
        assert int(got["queued"]) + int(got["waiting"]) == PENDING, screen
        assert (got["running"], got["ok"], got["failed"]) == ("0", "5", "1"), screen
        assert (s["running"], s["succeeded"], s["failed"]) == (0, 5, 1)
        for field in ("wait_p50_s", "wait_p95_s", "run_p50_s", "run_p95_s"):
            label = field[:-2].replace("_", " ")
            assert s[field] is not None and got[label] == seconds(s[field]), (field, screen)
        assert got["route calls"].isdigit() and int(got["route calls"]) <= s["route_calls"]
        assert "no worker" in block[0], block[0]
        # The history: pending jobs now, and no job done in the last reads.
        assert re.search(rf"pending +[▁▂▃▄▅▆▇█ ]+ {PENDING}\b", screen), screen
        assert re.search(r"done/s +[▁▂▃▄▅▆▇█ ]+ 0\.0\b", screen), screen
        # The newest failure, from the job index (stats' last_failures): id and kind.
        bad = scene["bad"]
        assert s["last_failures"][0]["id"] == bad.id
        failure = next(line for line in block if bad.id in line)
        assert FAILURES_LABEL in failure and bad.error_kind and bad.error_kind in failure, screen
        if cols >= 200:  # eight cells a line: a whole block in two lines of figures
            row = next(line for line in block if "queued" in line)
            assert "oldest wait" in row and "cancelled" in row, screen
            spark = next(line for line in block if "pending" in line)
            assert "done/s" in spark, screen
    finally:
        tmux.close()


def test_stats_at_80_columns(e2e_env: dict[str, str], client: Client,
                             scene: dict[str, Any]) -> None:
    """`dispatcher stats` piped, as a script or a narrow terminal gets it: the same block."""
    r = subprocess.run([sys.executable, "-m", "dispatcher", "stats"], capture_output=True,
                       text=True, env={**os.environ, **e2e_env, "COLUMNS": "80"}, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), r.stdout
    got = figures(block_of(r.stdout, scene["ep"]))
    assert set(got) == set(LABELS), r.stdout
    s = client.stats()["endpoints"][scene["ep"]]
    assert (got["ok"], got["failed"], got["wait p50"]) == (
        str(s["succeeded"]), str(s["failed"]), seconds(s["wait_p50_s"]))
    assert scene["bad"].id in r.stdout and FAILURES_LABEL in r.stdout
