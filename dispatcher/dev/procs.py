"""Child processes for the demo, the tests and the benchmarks: workers and an emulator.

Each child runs in its own process group so that stopping it (or Ctrl-C on the
parent) takes its threads and children with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Self

import redis


class Child:
    def __init__(self, name: str, args: list[str], env: Mapping[str, str],
                 log_path: str | None = None) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log_path = log_path or tempfile.mktemp(prefix=f"dispatcher-{name}-", suffix=".log")
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the child's group and wait; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.alive():
            try:
                os.killpg(self.pid, sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 5)

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_process(env: Mapping[str, str], *, concurrency: int = 64, name: str = "worker",
                   loglevel: str = "INFO", queue: str | None = None,
                   webhooks: bool = False) -> Child:
    """A real Celery worker, threads pool, as ``dispatcher worker`` runs it
    (``webhooks``: as ``dispatcher worker --webhooks``, deliveries only)."""
    args = [sys.executable, "-m", "dispatcher", "worker", "--concurrency", str(concurrency),
            "--loglevel", loglevel, "--hostname", f"{name}-{os.getpid()}-{time.time_ns()}@%h"]
    if queue:
        args += ["--queue", queue]
    if webhooks:
        args.append("--webhooks")
    return Child(name, args, {**os.environ, **env})


def wait_for_worker(redis_url: str, child: Child, timeout: float = 30.0) -> None:
    """Wait until the worker logs that it is ready (its mover runs then too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "ready." in child.log_text():
            return
        if not child.alive():
            raise RuntimeError(f"worker exited early:\n{child.log_text()[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"worker not ready after {timeout}s:\n{child.log_text()[-3000:]}")


class EmulatorProcess(Child):
    """``dispatcher emulator`` in a child process; the URL is read from its first line."""

    def __init__(self, config: dict[str, Any], port: int = 0, env: Mapping[str, str] | None = None):
        self.config_path = tempfile.mktemp(prefix="dispatcher-emulator-", suffix=".json")
        Path(self.config_path).write_text(json.dumps(config))
        args = [sys.executable, "-m", "dispatcher", "emulator", "--config", self.config_path,
                "--port", str(port)]
        super().__init__("emulator", args, {**os.environ, **(env or {})})
        self.route_url = ""
        self.url = ""

    def start(self, timeout: float = 20.0) -> Self:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_text().splitlines():
                if "/route/" in line and "http" in line:
                    self.route_url = line[line.index("http"):].split()[0]
                    self.url = self.route_url.rsplit("/route/", 1)[0]
                    return self
            if not self.alive():
                raise RuntimeError(f"emulator exited early:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError("emulator did not print its URL")

    def stats(self) -> dict[str, Any]:
        import requests

        return requests.get(self.url + "/_emulator/stats", timeout=10).json()

    def configure(self, patch: dict[str, Any]) -> None:
        import requests

        requests.post(self.url + "/_emulator/config", json=patch, timeout=10).raise_for_status()


class GatewayProcess(Child):
    """``dispatcher gateway`` in a child process, on loopback; the URL is read from its
    first line. ``token`` None: ``--no-auth``."""

    def __init__(self, env: Mapping[str, str], token: str | None = None, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        args = [sys.executable, "-m", "dispatcher", "gateway", "--host", host,
                "--port", str(port)]
        extra = {"DISPATCHER_GATEWAY_TOKEN": token} if token else {}
        if token is None:
            args.append("--no-auth")
        super().__init__("gateway", args, {**os.environ, **env, **extra})
        self.url = ""

    def start(self, timeout: float = 30.0) -> Self:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_text().splitlines():
                if line.startswith("dispatcher gateway on "):
                    self.url = line.split()[3]
                    return self
            if not self.alive():
                raise RuntimeError(f"gateway exited early:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError("gateway did not print its URL")


def flush(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
