"""Vast's real PyWorker (``vastai`` 1.9.1) in front of a tiny model server, both as child
processes, with the emulator as their control plane: the setup of docs/emulator.md,
"Develop your PyWorker offline", run for real.

Processes are started by the fixtures below and always killed by them, passed or failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatcher.emulator import Emulator

KEY = "pyworker-test-key"
# What PyWorker reads from its environment: only what a test sets, never the caller's.
PYWORKER_VARS = {"REPORT_ADDR", "WORKER_PORT", "WORKER_HTTP_PORT", "PUBLIC_IPADDR",
                 "CONTAINER_ID", "MASTER_TOKEN", "UNSECURED", "USE_SSL", "MODEL_HEALTH_ENDPOINT"}
ON_LOAD = "MODEL LOADED: ready for requests"

# A model server as a user might write one: it logs the PyWorker's on_load line once it
# listens, echoes each request (after "sleep" seconds if asked), and has a healthcheck.
# POST /generate_stream streams as an OpenAI-style server does (text/event-stream, chunked):
# "pieces" events (default 5), one per "interval" seconds (default 0.05), each written and
# flushed at its time with the time.time() it was written ("t"), then "data: [DONE]".
MODEL_SERVER = textwrap.dedent('''
    import json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port, log_file = int(sys.argv[1]), sys.argv[2]
    delay, on_load = float(sys.argv[3]), sys.argv[4]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"healthy": True})

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/generate_stream":
                return self._stream(payload)
            time.sleep(payload.get("sleep", 0) if isinstance(payload, dict) else 0)
            self._send(200, {"path": self.path, "echo": payload, "model_pid": os.getpid()})

        def _stream(self, payload):
            pieces, interval = payload.get("pieces", 5), payload.get("interval", 0.05)
            self.protocol_version = "HTTP/1.1"  # chunked, as vLLM and TGI answer
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()

            def chunk(data):
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
                self.wfile.flush()

            for i in range(pieces):
                if i:
                    time.sleep(interval)
                event = {"id": payload.get("id"), "i": i, "t": time.time(), "choices": [
                    {"index": 0, "text": f"tok{i} ",
                     "finish_reason": "stop" if i == pieces - 1 else None}]}
                chunk(b"data: " + json.dumps(event).encode() + b"\\n\\n")
            chunk(b"data: [DONE]\\n\\n")
            self.wfile.write(b"0\\r\\n\\r\\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    time.sleep(delay)  # "loading the model"
    with open(log_file, "a") as f:
        f.write(on_load + "\\n")
    server.serve_forever()
''')

# A worker.py as in Vast's PyWorker docs; the benchmark made one quick run, so start-up
# is fast, and a healthcheck, so PyWorker does not wait 10 s before reporting loaded.
WORKER_PY = textwrap.dedent(f'''
    import os
    from vastai.serverless.server.worker import (
        BenchmarkConfig, HandlerConfig, LogActionConfig, Worker, WorkerConfig)

    Worker(WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=int(os.environ["MODEL_PORT"]),
        model_log_file=os.environ["MODEL_LOG"],
        model_healthcheck_url="/health",
        handlers=[HandlerConfig(
            route="/generate",
            allow_parallel_requests=True,
            max_queue_time=60.0,
            benchmark_config=BenchmarkConfig(dataset=[{{"prompt": "benchmark"}}], runs=1,
                                             concurrency=1, do_warmup=False),
        ), HandlerConfig(  # a route of its own: PyWorker serves only the routes it is given
            route="/generate_stream",
            allow_parallel_requests=True,
            max_queue_time=60.0,
        )],
        log_action_config=LogActionConfig(on_load=[{ON_LOAD!r}]),
    )).run(host="127.0.0.1")
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)


@dataclass
class Model:
    proc: Proc
    port: int
    log_file: Path


@dataclass
class PyWorkerProc:
    proc: Proc
    id: int
    port: int
    url: str
    env: dict[str, str]


def pyworker_env(vast: Emulator, mtoken: str, container_id: int, model: Model,
                 port: int, http_port: int) -> dict[str, str]:
    """The environment Vast gives an instance, pointed at the emulator (docs/emulator.md)."""
    return {
        "REPORT_ADDR": vast.url,
        "WORKER_PORT": str(port),
        f"VAST_TCP_PORT_{port}": str(port),
        "PUBLIC_IPADDR": "127.0.0.1",
        "CONTAINER_ID": str(container_id),
        "MASTER_TOKEN": mtoken,
        "WORKER_HTTP_PORT": str(http_port),
        "MODEL_PORT": str(model.port),
        "MODEL_LOG": str(model.log_file),
    }


class Launcher:
    """Starts model servers and PyWorkers under ``tmp_path``; kills them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[Proc] = []
        (tmp_path / "model_server.py").write_text(MODEL_SERVER)
        (tmp_path / "worker.py").write_text(WORKER_PY)
        self._ids = 100
        self._ports: set[int] = set()

    def _port(self) -> int:
        """A free port not handed out before: the children bind theirs seconds later, and
        until then the kernel may offer the same free port twice."""
        while (port := free_port()) in self._ports:
            pass
        self._ports.add(port)
        return port

    def _spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> Proc:
        log = self.tmp / f"{name}.log"
        inherited = {k: v for k, v in os.environ.items()
                     if k not in PYWORKER_VARS and not k.startswith("VAST_TCP_PORT_")}
        with log.open("wb") as out:
            popen = subprocess.Popen(args, env={**inherited, **env}, cwd=cwd, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def model(self, delay: float = 0.0) -> Model:
        port = self._port()
        log_file = self.tmp / f"model-{port}.log"
        proc = self._spawn(f"model-{port}", [sys.executable, str(self.tmp / "model_server.py"),
                                             str(port), str(log_file), str(delay), ON_LOAD],
                           {}, self.tmp)
        return Model(proc, port, log_file)

    def pyworker(self, vast: Emulator, model: Model, mtoken: str = "llm",
                 env: dict[str, str] | None = None) -> PyWorkerProc:
        self._ids += 1
        port = self._port()
        cwd = self.tmp / f"pyworker-{self._ids}"  # its own .has_benchmark file
        cwd.mkdir()
        full = {**pyworker_env(vast, mtoken, self._ids, model, port, self._port()), **(env or {})}
        proc = self._spawn(f"pyworker-{self._ids}", [sys.executable, str(self.tmp / "worker.py")],
                           full, cwd)
        return PyWorkerProc(proc, self._ids, port, f"http://127.0.0.1:{port}", full)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             procs: list[Proc] = ()) -> Any:  # type: ignore[assignment]
    """Poll ``check`` until it returns something truthy; on timeout, fail with the logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name}:\n{p.log_text()[-2500:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def pyworker_state(vast: Emulator, endpoint: str, wid: int) -> str | None:
    for pw in vast.stats()["endpoints"][endpoint].get("pyworkers", []):
        if pw["id"] == wid:
            return pw["state"]
    return None


def route(vast: Emulator, endpoint: str, request_idx: int = 0, cost: float = 10) -> dict:
    r = requests.post(vast.route_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10,
                      json={"endpoint": endpoint, "cost": cost, "request_idx": request_idx})
    assert r.status_code == 200, r.text
    return r.json()


def assignment(vast: Emulator, endpoint: str, timeout: float = 15) -> dict:
    """Poll as a client does, keeping the job's request_idx, until a worker is assigned
    (a PyWorker's slots free when it reports its requests finished, about every second)."""
    idx = 0

    def routed() -> dict | None:
        nonlocal idx
        answer = route(vast, endpoint, request_idx=idx)
        idx = answer.get("request_idx", idx)
        return answer if "url" in answer else None

    return wait_for(routed, timeout, f"an assignment for {endpoint!r}")


def call(answer: dict, payload: Any, path: str = "/generate",
         timeout: float = 30) -> requests.Response:
    """The worker call as Vast's client makes it: the route answer verbatim as auth_data."""
    return requests.post(answer["url"] + path, timeout=timeout,
                         json={"auth_data": answer, "payload": payload, "session_id": None})
