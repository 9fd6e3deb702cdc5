"""Starting and stopping, load, and the process entry point."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from dispatcher.emulator import Emulator
from dispatcher.emulator.cli import main

from .conftest import FAST, KEY, assign, call, make_config, route

pytestmark = pytest.mark.timeout(60)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_fifty_emulators_leak_no_threads_or_fds() -> None:
    cfg = make_config(endpoints={"e": {"workers": 2, "max_workers": 3, "latency": FAST}})
    with Emulator(cfg):
        pass  # warm imports and lazy globals
    fds, threads = _fds(), threading.active_count()
    for _ in range(50):
        with Emulator(cfg) as vast:
            call(assign(vast, "e"), {"id": "x"})
    assert threading.active_count() == threads
    assert _fds() <= fds + 2  # a little slack for the interpreter's own lazy files


def test_stop_with_requests_hanging_is_quick_and_idempotent() -> None:
    cfg = make_config(endpoints={"e": {"workers": 1, "concurrency": 4, "hang_workers": 1}})
    vast = Emulator(cfg).start()
    pool = concurrent.futures.ThreadPoolExecutor(4)
    futures = [pool.submit(call, assign(vast, "e"), {"n": i}, timeout=30) for i in range(4)]
    time.sleep(0.3)
    t0 = time.monotonic()
    vast.stop()
    assert time.monotonic() - t0 < 3
    for f in futures:
        with pytest.raises(requests.ConnectionError):
            f.result(timeout=5)
    pool.shutdown()
    vast.stop()
    with pytest.raises(RuntimeError):
        vast.stats()


def test_port_in_use_fails_start_cleanly() -> None:
    with Emulator(make_config()) as first:
        threads = threading.active_count()
        with pytest.raises(OSError):
            Emulator(make_config(), port=first.port).start()
        assert threading.active_count() == threads


def test_calls_from_many_threads_are_safe() -> None:
    cfg = make_config(endpoints={"llm": {"workers": 2, "concurrency": 8, "latency": FAST}})
    vast = Emulator(cfg).start()

    def work(i: int) -> None:
        for j in range(10):
            vast.stats()
            vast.configure({"endpoints": {"llm": {"failure_rate": 0.0}}})
            assert vast.worker_urls("llm")
            assert call(assign(vast, "llm"), {"id": f"{i}-{j}"}).status_code == 200

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        assert vast.stats()["workers"]["executions"] == 80
    finally:
        vast.stop()


def test_holds_2000_open_slow_requests() -> None:
    n = 2000
    cfg = make_config(endpoints={"big": {"workers": 2, "concurrency": n, "max_queue_time": 1e6,
                                         "latency": {"kind": "fixed", "seconds": 3.0}}})

    async def everything(vast: Emulator) -> list[int]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        headers = {"Authorization": f"Bearer {KEY}"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            async def assign_one() -> dict:
                async with s.post(vast.route_url, json={"endpoint": "big"}, headers=headers) as r:
                    return await r.json()

            answers = await asyncio.gather(*(assign_one() for _ in range(n)))
            assert all("url" in a for a in answers)

            async def one(a: dict) -> int:
                body = {"auth_data": a, "payload": {"n": a["reqnum"]}}
                async with s.post(a["url"] + "/generate", json=body) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(one(a) for a in answers))

    with Emulator(cfg) as vast:
        codes = asyncio.run(everything(vast))
        assert codes.count(200) == n
        stats = vast.stats()
        assert stats["workers"]["peak_in_flight"] >= 0.9 * n  # all at once, not in waves
        assert stats["workers"]["executions"] == n and stats["duplicate_executions"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cli_process(*args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m dispatcher.emulator ARGS``, and the route URL from its first line."""
    with subprocess.Popen([sys.executable, "-m", "dispatcher.emulator", *args],
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            yield proc, line[line.index("http"):].split()[0]
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_process_prints_its_url_answers_and_exits_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "emu.yaml"
    config.write_text("endpoints:\n  e: {workers: 1, latency: {kind: fixed, seconds: 0.01}}\n")
    port = _free_port()
    with cli_process("--config", str(config), "--port", str(port), "--api-key", KEY) as (
            proc, url):
        assert url == f"http://127.0.0.1:{port}/route/"
        r = requests.post(url, json={"endpoint": "e", "cost": 1},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
        assert r.status_code == 200 and "url" in r.json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_cli_default_config_and_sigint() -> None:
    with cli_process("--port", "0") as (proc, url):
        r = requests.post(url, json={"endpoint": "demo"}, timeout=5,
                          headers={"Authorization": "Bearer emulator-key"})
        assert r.status_code == 200 and r.json()["status"] == "1 loading, 0 idle, 0 busy"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"endpoints": {"e": {"workers": -1}}}')
    assert main(["--config", str(bad)]) == 2
    assert "endpoints.e.workers" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    with Emulator(make_config()) as vast:
        assert main(["--port", str(vast.port)]) == 1
        assert "cannot start" in capsys.readouterr().err
        assert route(vast, {"endpoint": "x"}).status_code == 400  # still fine


def test_cli_tells_pyworkers_where_to_report(tmp_path: Path) -> None:
    config = tmp_path / "emu.yaml"
    config.write_text("endpoints:\n  llm: {workers_from: pyworker}\n")
    with cli_process("--config", str(config), "--port", "0") as (proc, url):
        line = proc.stdout.readline()  # type: ignore[union-attr]
        base = url.removesuffix("/route/")
        assert f"REPORT_ADDR={base}," in line and "llm" in line
        r = requests.post(base + "/worker_status/", timeout=5,
                          json={"id": 1, "mtoken": "llm", "url": "http://127.0.0.1:9"})
        assert r.json() == {"ok": True}
        assert requests.get(base + "/pubkey/", timeout=5).text.startswith("-----BEGIN")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
