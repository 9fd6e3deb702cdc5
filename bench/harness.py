"""Processes and measurement: Redis, emulator, workers, RSS, progress and result watching."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dispatcher.dev.procs import Child, EmulatorProcess, wait_for_worker, worker_process
from dispatcher.dev.redis_server import RedisServer
from dispatcher.model import TERMINAL
from dispatcher.store.keys import job_key

API_KEY = "bench-key-not-a-secret"
REPO = Path(__file__).resolve().parent.parent

# Done-checks read at most this many results per Redis round trip, oldest first.
WATCH_WINDOW = 64
WATCH_SLEEP = 0.02


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc; psutil elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    import psutil  # only off Linux

    return psutil.Process(pid).memory_info().rss


class RssSampler:
    """Samples the RSS of some processes every ``interval`` seconds in a thread."""

    def __init__(self, pids: Sequence[int], interval: float = 0.25) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.start_rss = self._total()
        self.peak = self.start_rss
        self.last = self.start_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)

    def _total(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                total += rss_bytes(pid)
            except (OSError, ProcessLookupError):
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> int:
        self.last = self._total()
        self.peak = max(self.peak, self.last)
        return self.last

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sample()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    if pid == os.getpid():
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        import psutil  # only off Linux

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process spends inside a ``with`` block."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self._t0
        for name, pid in self.pids.items():
            try:
                self.used[name] = cpu_seconds(pid) - self._start[name]
            except (OSError, ProcessLookupError):
                self.used[name] = float("nan")


def machine_info(redis_url: str) -> dict[str, Any]:
    """nproc, RAM, CPU model, Python/Celery/kombu/redis-py/Redis versions and the date."""
    import celery
    import kombu

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except FileNotFoundError:
        cpu = platform.processor() or "unknown"
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    r = redis.Redis.from_url(redis_url)
    try:
        redis_version = r.info("server")["redis_version"]
    finally:
        r.close()
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": redis_version,
        "platform": platform.platform(),
        "git": _git_state(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _git_state() -> str:
    """Commit of the code measured, with "+dirty" if the work tree had changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!bench/results"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty.strip() else "")


def repo_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with the repository on PYTHONPATH, for child
    processes that import ``bench``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return env


class Harness:
    """Owns every process of a run (one Redis; emulators and workers per scenario).

    Everything started through it is stopped by ``close()`` (and on ``with`` exit), in
    reverse order, even when a scenario fails.
    """

    def __init__(self, console: Console, log_dir: Path, loglevel: str = "INFO",
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.console = console
        self.log_dir = log_dir
        self.loglevel = loglevel
        self.extra_env = dict(extra_env or {})  # e.g. DISPATCHER_* for every dispatcher worker
        self.stack = ExitStack()
        self.redis: RedisServer | None = None

    def __enter__(self) -> Harness:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = self.stack.enter_context(RedisServer())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stack.close()

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def client_redis(self) -> redis.Redis:
        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.stack.callback(r.close)
        return r

    def _log(self, name: str) -> str:
        return str(self.log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log")

    @contextmanager
    def emulator(self, endpoints: Mapping[str, Mapping[str, Any]],
                 **config_extra: Any) -> Iterator[EmulatorProcess]:
        """The Vast emulator in its own process (it must not share the bench's GIL)."""
        config = {"api_key": API_KEY, "seed": 1, "endpoints": dict(endpoints), **config_extra}
        emu = EmulatorProcess(config)
        emu.log_path = self._log("emulator")
        with ExitStack() as stack:
            stack.callback(emu.stop)
            emu.start()
            yield emu

    def worker_env(self, emu: EmulatorProcess, queue: str, concurrency: int,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "VAST_API_KEY": API_KEY,
            "VAST_ROUTE_URL": emu.route_url,
            "DISPATCHER_QUEUE": queue,
            "DISPATCHER_CONCURRENCY": str(concurrency),
            # Default settings unless a scenario or --worker-env sets one.
            **self.extra_env,
            **(extra or {}),
        }

    @contextmanager
    def workers(self, env: Mapping[str, str], count: int, concurrency: int
                ) -> Iterator[list[Child]]:
        """``count`` dispatcher worker processes (threads pool), started in parallel."""
        children = []
        for i in range(count):
            child = worker_process(env, concurrency=concurrency, name=f"worker{i}",
                                   loglevel=self.loglevel)
            child.log_path = self._log(f"worker{i}")
            children.append(child)
        with self._started(children, env["REDIS_URL"]):
            yield children

    @contextmanager
    def ceiling_workers(self, queue: str, count: int, concurrency: int,
                        dispatcher_conf: bool = False) -> Iterator[list[Child]]:
        """Workers of the bare Celery no-op app (``bench.ceiling``)."""
        env = {**repo_env(), "BENCH_REDIS_URL": self.redis_url, "BENCH_QUEUE": queue,
               "BENCH_CELERY_CONF": "dispatcher" if dispatcher_conf else "",
               "BENCH_CONCURRENCY": str(concurrency)}
        children = []
        for i in range(count):
            args = [sys.executable, "-m", "celery", "-A", "bench.ceiling", "worker",
                    "--pool", "threads", "--concurrency", str(concurrency),
                    "--loglevel", self.loglevel, "--queues", queue,
                    "--without-mingle", "--without-gossip",
                    "--hostname", f"ceiling{i}-{os.getpid()}-{time.time_ns()}@%h"]
            children.append(Child(f"ceiling{i}", args, env, log_path=self._log(f"ceiling{i}")))
        with self._started(children, self.redis_url):
            yield children

    @contextmanager
    def _started(self, children: list[Child], redis_url: str) -> Iterator[None]:
        with ExitStack() as stack:
            for child in children:
                stack.callback(child.stop)
                child.start()
            for child in children:
                wait_for_worker(redis_url, child, timeout=60)
            yield


def progress(console: Console) -> Progress:
    """A transient rich progress bar for one scenario's phases."""
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )


DoneCheck = Callable[[Sequence[str]], list[bool]]


def job_done_check(r: redis.Redis) -> DoneCheck:
    """Done-check for dispatcher jobs: the status field is terminal."""
    def check(ids: Sequence[str]) -> list[bool]:
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "status")
        return [s in TERMINAL for s in pipe.execute()]

    return check


def celery_done_check(r: redis.Redis) -> DoneCheck:
    """Done-check for Celery results: the result is stored in the Redis backend."""
    def check(ids: Sequence[str]) -> list[bool]:
        raw = r.mget([f"celery-task-meta-{i}" for i in ids])
        return [v is not None and json.loads(v).get("status") == "SUCCESS" for v in raw]

    return check


def wait_all(ids: Sequence[str], check: DoneCheck, timeout: float,
             on_progress: Callable[[int], None] | None = None) -> float:
    """Block until every id is done; returns the wall time (``time.time()``) it was seen.

    Reads only a sliding window of the oldest unfinished ids per round trip, so
    watching costs little CPU next to the workers being measured.
    """
    pending = deque(ids)
    window: list[str] = []
    done = 0
    deadline = time.monotonic() + timeout
    while pending or window:
        while len(window) < WATCH_WINDOW and pending:
            window.append(pending.popleft())
        flags = check(window)
        left = [i for i, f in zip(window, flags, strict=True) if not f]
        done += len(window) - len(left)
        window = left
        if on_progress:
            on_progress(done)
        if window:  # the oldest unfinished job is still running: wait a little
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(window) + len(pending)} of {len(ids)} not done "
                                   f"after {timeout:g}s")
            time.sleep(WATCH_SLEEP)
    return time.time()
