"""Sampling profiles of a running worker with py-spy, summarised by area and function.

py-spy samples from outside the process (``--nonblocking``: the worker is never paused)
and only threads holding the GIL (``--gil``): on a GIL-bound threads-pool worker that
is exactly where its CPU goes.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")

# First match wins; judged on the frame's file path.
AREAS: list[tuple[str, str]] = [
    ("dispatcher", "/dispatcher/"),
    ("bench", "/bench/"),
    ("logging", "/logging/"),
    ("celery", "/celery/"),
    ("kombu", "/kombu/"),
    ("redis-py", "/redis/"),
    ("requests+urllib3", "/requests/"),
    ("requests+urllib3", "/urllib3/"),
    ("http.client/socket/ssl", "/http/"),
    ("http.client/socket/ssl", "/socket.py"),
    ("http.client/socket/ssl", "/ssl.py"),
    ("json", "/json/"),
    ("threading/queue", "/threading.py"),
    ("threading/queue", "/queue.py"),
    ("uuid", "/uuid.py"),
    ("billiard/vine/amqp", "/billiard/"),
    ("billiard/vine/amqp", "/vine/"),
    ("billiard/vine/amqp", "/amqp/"),
]


# Inclusive shares: a sample counts for a component if any frame's function matches.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("task body: dispatcher run_job", ("run_job",)),
    ("  HTTP: route call (dispatcher.net)", ("RouteClient.route",)),
    ("  HTTP: worker call (dispatcher.net)", ("WorkerClient.call_worker",)),
    ("  Lua transitions (claim, mark_running, finish)", ("Store.claim", "Store.mark_running",
                                                         "Store.finish", "Store.schedule")),
    ("Celery consumer loop (main thread)", ("Hub.create_loop",)),
    ("  task events", ("EventDispatcher.send", "EventDispatcher.publish",
                       "Consumer._flush_events")),
    ("  message acks", ("Message.ack",)),
    ("waiting-set mover thread", ("Mover._loop",)),
    ("logging", ("Logger._log",)),
]


def pyspy_binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def area_of(path: str) -> str:
    for label, needle in AREAS:
        if needle in path:
            return label
    return "other (stdlib, ...)"


def short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", "/work/main/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return path


class PySpy:
    """``py-spy record`` on one pid until the context exits (SIGINT makes it write out)."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def __enter__(self) -> PySpy:
        binary = pyspy_binary()
        if binary is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--gil",
             "--nonblocking", "--full-filenames", "--format", "raw", "--output", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        try:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        if not self.out.exists():
            self.error = f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"


def summarise(raw_path: Path, top: int = 12) -> dict[str, Any]:
    """Shares of GIL-holding samples: by area (leaf frame), by function (self and total)."""
    by_area: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    total_fn: Counter[str] = Counter()
    comps: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw)
            frames.append((m["func"], m["file"]) if m else (raw, ""))
        total += n
        func, path = frames[-1]
        by_area[area_of(path)] += n
        self_fn[f"{func} ({short(path)})"] += n
        for key in {f"{f} ({short(p)})" for f, p in frames if area_of(p) == "dispatcher"}:
            total_fn[key] += n
        funcs = {f for f, _ in frames}
        for label, names in COMPONENTS:
            if any(name in funcs for name in names):
                comps[label] += n

    def shares(c: Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in c.most_common(k)] if total else []

    return {
        "samples": total,
        "components_pct": [[label, round(100 * comps[label] / total, 1) if total else 0.0]
                           for label, _ in COMPONENTS],
        "by_area_pct": shares(by_area, len(by_area)),
        "top_self_pct": shares(self_fn, top),
        "dispatcher_total_pct": shares(total_fn, top),
    }
