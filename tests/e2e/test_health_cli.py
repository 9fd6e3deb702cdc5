"""Queue health against a real worker: stats --json, top, Prometheus metrics, purge and
bulk cancel, through the CLI as an operator runs it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.client import Client
from dispatcher.dev.redis_server import RedisServer
from dispatcher.emulator import Emulator

from .conftest import add_endpoint
from .test_cli_e2e import cli

pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _busy_endpoint(client: Client, vast: Emulator) -> tuple[str, list[str], list[str]]:
    """An endpoint with 5 finished jobs and 6 waiting for a GPU that never comes."""
    ep = add_endpoint(vast)
    done = [client.submit(ep, {"n": n}, path="/x") for n in range(5)]
    for job_id in done:
        assert client.wait(job_id, timeout=30).status == "succeeded"
    vast.configure({"endpoints": {ep: {"workers": 0, "max_workers": 0}}})
    vast.configure({"action": "stop_all", "endpoint": ep})
    waiting = [client.submit(ep, {"n": n}, path="/x", max_wait=600) for n in range(6)]
    deadline = time.time() + 20
    while client.stats()["endpoints"][ep]["waiting"] < 6:
        assert time.time() < deadline, client.stats()["endpoints"][ep]
        time.sleep(0.1)
    return ep, done, waiting


def test_stats_json_top_and_metrics_agree(e2e_env, client: Client, vast: Emulator) -> None:
    ep, _, waiting = _busy_endpoint(client, vast)
    r = cli(e2e_env, "stats", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)["endpoints"][ep]
    assert (s["succeeded"], s["waiting"], s["running"]) == (5, 6, 0)
    assert s["oldest_wait_s"] > 0 and s["route_calls"] >= 11
    assert s["last_route_status"].startswith("no worker")
    assert 0 < s["wait_p50_s"] <= s["wait_p95_s"] and s["run_p50_s"] > 0

    top = cli({**e2e_env, "COLUMNS": "250"}, "top", "--iterations", "2", "--interval", "0.1")
    assert top.returncode == 0, top.stderr
    # One block per endpoint (dispatcher/ops/top.py): its header, then label/value cells.
    block = top.stdout[top.stdout.rindex(ep):].split("\n\n")[0]
    assert "no worker" in block and re.search(r"waiting +6\b", block), block

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "metrics", "--host",
                             "127.0.0.1", "--port", str(port)],
                            env={**os.environ, **e2e_env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 20
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=5).read().decode()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for fam in text_string_to_metric_families(text) for m in fam.samples}
    assert samples[("dispatcher_up", ())] == 1
    assert samples[("dispatcher_jobs", (("endpoint", ep), ("state", "waiting")))] == 6
    assert samples[("dispatcher_jobs_finished_total",
                    (("endpoint", ep), ("status", "succeeded")))] == 5
    assert samples[("dispatcher_route_calls_total", (("endpoint", ep),))] >= 11
    assert ("dispatcher_wait_seconds", (("endpoint", ep), ("quantile", "0.95"))) in samples
    client.cancel_many(waiting)


def _scrape_up(port: int, timeout: float) -> float:
    """dispatcher_up from one scrape, as Prometheus makes it (it gives up after `timeout`)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                  timeout=timeout).read().decode()
    (up,) = [m.value for fam in text_string_to_metric_families(text) for m in fam.samples
             if m.name == "dispatcher_up"]
    return up


# Prometheus' default scrape_timeout: a scrape that answers later is a failed scrape, and
# dispatcher_up 0 is never recorded.
SCRAPE_TIMEOUT = 10.0


@pytest.mark.timeout(180)
def test_metrics_answer_when_redis_is_down() -> None:
    """The real redis-server stopped under `dispatcher metrics`, then started again."""
    with RedisServer() as server:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "dispatcher", "metrics", "--host",
                                 "127.0.0.1", "--port", str(port)],
                                env={**os.environ, "REDIS_URL": server.url},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    assert _scrape_up(port, SCRAPE_TIMEOUT) == 1
                    break
                except OSError:
                    assert time.time() < deadline and proc.poll() is None
                    time.sleep(0.2)
            server.stop()
            assert _scrape_up(port, SCRAPE_TIMEOUT) == 0
            server.start()  # the same port
            assert _scrape_up(port, SCRAPE_TIMEOUT) == 1
        finally:
            proc.terminate()
            proc.wait(10)


def test_purge_asks_then_cancels_only_waiting_jobs(e2e_env, client: Client,
                                                   vast: Emulator) -> None:
    ep, done, waiting = _busy_endpoint(client, vast)
    refused = cli(e2e_env, "purge", ep)  # no terminal to confirm on
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert client.stats()["endpoints"][ep]["waiting"] == 6
    r = cli(e2e_env, "purge", ep, "--yes")
    assert r.returncode == 0 and "6 job(s)" in r.stdout, r.stderr
    assert {client.get_job(i).status for i in waiting} == {"cancelled"}
    assert {client.get_job(i).status for i in done} == {"succeeded"}
    s = client.stats()["endpoints"][ep]
    assert (s["queued"], s["waiting"], s["cancelled"]) == (0, 0, 6)
    unknown = cli(e2e_env, "purge", "never-seen-endpoint", "--yes")
    assert unknown.returncode == 2 and "endpoint" in unknown.stderr


def test_bulk_cancel_from_stdin(e2e_env, client: Client, vast: Emulator) -> None:
    ep, done, waiting = _busy_endpoint(client, vast)
    ids = "\n".join(waiting + [done[0]]) + "\n"
    r = subprocess.run([sys.executable, "-m", "dispatcher", "cancel", "--stdin"], input=ids,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, **e2e_env})
    assert r.returncode == 1  # one of them had already succeeded
    assert r.stdout.count("cancelled") == 6 and f"{done[0]} not cancelled" in r.stderr
    assert {client.get_job(i).status for i in waiting} == {"cancelled"}
